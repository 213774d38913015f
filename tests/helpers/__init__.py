"""Test helpers, one module per concern; each says at its top what it offers.

- `project`: the repository root, the API key and the secret every test uses.
- `drivers`: in-process drivers for a WSGI or an ASGI app, and the basic site wrapped.
- `strict_drivers`: in-process drivers that also hold the middleware to the protocol.
- `wire`: the identity cookie and PostHog events, read back.
- `pages`: a small page to inject into, and our snippet read back out of a page.
- `posthog_js`: what posthog-js keeps in the browser (its persistence cookie and session).
- `consent`: the consent states and settings the consent tests share.
- `node`: running the snippet's JavaScript in Node against a stand-in posthog.
- `servers`: real servers (gunicorn, uvicorn, hypercorn, granian, waitress) in subprocesses.
- `upstream`: PostHog as the proxy sees it, recording every request (and every aborted one).
- `faults`: PostHog failing on 127.0.0.1 (hanging, 500, 429, closing, refused).
- `flags`: posthog-python's own flag answers, to compare with the bootstrap; posthog's
  module as an app configures it.
- `sink`: raw HTTP requests to a `Sink` and the payloads clients send, for the sink's own tests.
- `demo`: the demo (`python -m posthog_identity demo`) in a subprocess, its terminal read.
- `browser`: Chromium's path and flags, the pinned posthog-js, the browser site under a server.
- `spa`: the example single-page app (`examples/spa/`) under a plain static server.
"""
