"""Where one in-process case spends its time: a profile, and a component breakdown.

    python bench/profile_request.py asgi.ours_returning              # pyinstrument tree
    python bench/profile_request.py wsgi.ours_html --tool cprofile
    py-spy record -o profile.svg -- python bench/profile_request.py asgi.ours_returning --tool none
    python bench/profile_request.py --breakdown                      # µs per step, best of 7

The case names are `run.py`'s (``asgi.ours_returning``, ``wsgi.flask_session``, ...).
The breakdown times the steps of a returning visitor's request one by one, with
timeit's best-of-N (the least disturbed by other processes); it reaches into
the library's internals, so it is a diagnostic, not part of the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import timeit
from collections.abc import Callable
from typing import Any

import inprocess
from common import COOKIE_NAME, OTHER_COOKIES, identity_cookie, offline_client, settings


def profile(key: str, requests: int, tool: str, html: str | None) -> None:
    loop = asyncio.new_event_loop()
    cases = {c.key: c for c in inprocess.asgi_cases(loop) + inprocess.wsgi_cases()}
    if key not in cases:
        raise SystemExit(f"unknown case {key!r}; one of: {', '.join(cases)}")
    case = cases[key]
    case.verify()
    case.run(max(1, requests // 20))  # warm up
    if tool == "pyinstrument":
        from pyinstrument import Profiler

        sampler = Profiler(interval=0.0001, async_mode="disabled")
        sampler.start()
        case.run(requests)
        sampler.stop()
        if html:
            sampler.write_html(html)
        print(sampler.output_text(unicode=True, color=False))
    elif tool == "cprofile":
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        case.run(requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    else:  # under an external sampler such as py-spy
        elapsed = case.run(requests)
        print(f"{key}: {elapsed / requests / 1000:.2f} µs per request (wall, with the sampler)")
    loop.close()


def breakdown() -> None:
    import posthog
    from werkzeug.http import parse_cookie

    from posthog_identity import asgi_scope
    from posthog_identity.context import bind, rebind
    from posthog_identity.engine import Engine
    from posthog_identity.exchange import Exchange, RequestInfo
    from posthog_identity.html import inject, may_inject
    from posthog_identity.identity import NOTHING

    engine = Engine(settings(), offline_client())
    value = identity_cookie()
    header = f"{OTHER_COOKIES}; {COOKIE_NAME}={value}; session=x"
    scope = inprocess.asgi_scope(header)
    request = RequestInfo("GET", "https", "/", header)
    exchange = Exchange(engine, request)
    json_headers = [("content-type", "application/json"), ("content-length", "40")]
    html_headers = [("content-type", "text/html; charset=utf-8"), ("content-length", "20480")]
    snippet = engine.snippet.render(exchange.identity)  # type: ignore[union-attr]

    def scoped() -> None:
        with bind(exchange):
            pass

    def scoped_rebind() -> None:
        with bind(exchange):
            rebind(exchange, lambda: exchange.report(NOTHING))

    def posthog_context() -> None:
        with posthog.new_context(fresh=True, capture_exceptions=False):
            posthog.identify_context("x")

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("asgi: scope -> RequestInfo (header scan)", lambda: asgi_scope.request_info(scope, "/")),
        ("werkzeug parse_cookie(whole Cookie header)", lambda: parse_cookie(header)),
        ("CookieCodec.loads (itsdangerous unsign + parse)", lambda: engine.codec.loads(value)),
        ("Exchange: cookie read and verified", lambda: Exchange(engine, request)),
        ("... and resolve()", lambda: Exchange(engine, request).resolution),
        ("bind(): ContextVar + posthog context, enter+exit", scoped),
        ("  posthog.new_context + identify_context alone", posthog_context),
        ("bind() + rebind() at response start", scoped_rebind),
        ("Exchange.respond(JSON): no Set-Cookie", lambda: exchange.respond(200, json_headers)),
        ("may_inject(JSON response)", lambda: may_inject("GET", 200, json_headers)),
        ("Exchange.respond(HTML): snippet render", lambda: exchange.respond(200, html_headers)),
        ("Snippet.render alone", lambda: engine.snippet.render(exchange.identity)),  # type: ignore[union-attr]
        ("inject() into a 20 KB page", lambda: inject(inprocess.HTML_BODY, snippet)),
    ]
    width = max(len(label) for label, _ in steps)
    for label, step in steps:
        number = 2000
        best = min(timeit.repeat(step, number=number, repeat=7)) / number
        print(f"{label.ljust(width)}  {best * 1e6:7.2f} µs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", nargs="?", default="asgi.ours_returning")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument(
        "--tool", choices=("pyinstrument", "cprofile", "none"), default="pyinstrument"
    )
    parser.add_argument("--html", help="also write pyinstrument's HTML report here")
    parser.add_argument("--breakdown", action="store_true", help="time the steps one by one")
    args = parser.parse_args()
    if args.breakdown:
        breakdown()
    else:
        profile(args.case, args.requests, args.tool, args.html)
    return 0


if __name__ == "__main__":
    sys.exit(main())
