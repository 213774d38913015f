"""Where one in-process case spends its time: a profile, and a component breakdown.

    python bench/profile_request.py asgi.ours_returning              # pyinstrument tree
    python bench/profile_request.py wsgi.ours_html --tool cprofile
    py-spy record -o profile.svg -- python bench/profile_request.py asgi.ours_returning --tool none
    python bench/profile_request.py --breakdown                      # µs per step
    python bench/profile_request.py --interleaved                    # beside a server's work

The case names are `run.py`'s (``asgi.ours_returning``, ``wsgi.flask_session``, ...).
The breakdown runs a returning visitor's ASGI request one step further per rung
and times every rung (GC on, the best of interleaved rounds, the least disturbed
by other processes), so the steps add up to the whole path, checked against the
real middleware timed beside them; it reaches into the library's internals, so
it is a diagnostic, not part of the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

import inprocess
from common import (
    COOKIE_NAME,
    JSON_BODY,
    OTHER_COOKIES,
    identity_cookie,
    offline_client,
    posthog_peer,
    settings,
)


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


def _drive(coroutine: Any) -> None:
    """Run a coroutine that never suspends (the in-process request path does not)
    to its end without an event loop: no loop noise in what is timed."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise RuntimeError("the request suspended: this breakdown times only non-suspending paths")


def _ladder(rungs: list[tuple[str, Callable[[], Any]]], rounds: int, number: int) -> list[float]:
    """Each rung's µs of this thread's CPU per call (wall time on a machine shared
    with other work moves too much to resolve a fraction of a µs), with the
    garbage collector on: the minimum over
    `rounds` interleaved rounds (every rung timed once per round, so a slow phase
    of the machine hits them all), the least disturbed by other processes."""
    best = [float("inf")] * len(rungs)
    for _ in range(rounds):
        for index, (_, step) in enumerate(rungs):
            timer = timeit.Timer(step, setup=gc.enable, timer=time.thread_time)
            elapsed = timer.timeit(number) / number
            best[index] = min(best[index], elapsed * 1e6)
    return best


def breakdown(rounds: int = 15, number: int = 2000) -> None:
    """The returning visitor's ASGI request, JSON, rung by rung: each rung runs the
    middleware's path one step further (the steps as `asgi.IdentityMiddleware.__call__`
    takes them), so each step costs the difference to the rung before, and the last
    rung is the whole path. The real middleware is timed beside it: the parts must
    add up to its overhead, or the path copied here has drifted from the real one."""
    from posthog_identity.asgi import IdentityMiddleware
    from posthog_identity.asgi_scope import header, mount_path, request_info, vouch
    from posthog_identity.asgi_send import Responder
    from posthog_identity.context import bind
    from posthog_identity.exchange import Exchange
    from posthog_identity.identity import Absent

    value = identity_cookie()
    cookie = f"{OTHER_COOKIES}; {COOKIE_NAME}={value}; session=x"
    scope = inprocess.asgi_scope(cookie)
    bare = inprocess.asgi_app(JSON_BODY, inprocess._asgi_json_headers)
    ours = IdentityMiddleware(bare, settings(), client=offline_client())
    engine = ours.engine
    receive, drop = inprocess._receive, inprocess._drop

    async def path(upto: int) -> None:
        """`IdentityMiddleware.__call__` for this request, stopping after step `upto`."""
        request_scope = dict(scope)
        kind = request_scope["type"]
        if kind == "lifespan" or kind not in ("http", "websocket"):
            return
        where = mount_path(request_scope)
        proxy = engine.proxy
        if proxy is not None and proxy.matches(where):
            return
        method = request_scope.get("method", "")
        if (ours._filters or method == "OPTIONS") and engine.bypasses(
            where, method, header, request_scope
        ):
            return
        if upto < 2:
            return
        request, distinct = request_info(request_scope, where)
        if upto < 3:
            return
        report = ours.user_now(request_scope)
        if not isinstance(report, (str, Absent)):  # a callback to await
            report = await report
        exchange = Exchange(engine, request, report, request_scope)
        if upto < 4:
            return
        identity = exchange.identity
        if distinct:
            vouch(request_scope, identity.distinct_id)
        if upto < 5:
            return
        with bind(exchange):
            if upto < 6:
                return
            responder = Responder(exchange, drop, ours.user_now, request_scope)
            await bare(request_scope, receive, responder)

    def rung(upto: int) -> Callable[[], None]:
        return lambda: _drive(path(upto))

    steps = [
        "dispatch: scope type, mount path, proxy and bypass checks",
        "request_info: one pass over the headers",
        "user source (none) and Exchange: cookie found, unsigned, parsed",
        "resolve(): the identity",
        "bind(): ContextVar, posthog context, identify, tags, session; and its exit",
        "the app's two messages through Responder: settle, Content-Type, leaves_alone",
    ]
    rungs: list[tuple[str, Callable[[], Any]]] = [
        ("copy of the scope (as the bench gives every request)", lambda: dict(scope)),
        *((label, rung(index + 1)) for index, label in enumerate(steps)),
        ("bare app alone", lambda: _drive(bare(dict(scope), receive, drop))),
        (
            "the real middleware around the bare app",
            lambda: _drive(ours(dict(scope), receive, drop)),
        ),
    ]
    times = _ladder(rungs, rounds, number)
    copy, ladder, bare_us, real = times[0], times[1:-2], times[-2], times[-1]
    width = max(len(label) for label in steps) + 2
    print(f"ASGI, returning visitor, JSON: CPU µs per request, GC on, best of {rounds} rounds")
    before = copy
    parts = []
    for label, total in zip(steps, ladder, strict=True):
        part = total - before
        if label.startswith("the app's"):
            part -= bare_us - copy  # the bare app's own work is not ours
        parts.append(part)
        print(f"  {label.ljust(width)}{part:7.2f}")
        before = total
    overhead = real - bare_us
    accounted = sum(parts)
    print(f"  {'sum of the steps'.ljust(width)}{accounted:7.2f}")
    print(f"  {'measured: real middleware - bare app'.ljust(width)}{overhead:7.2f}")
    print(f"  {'accounted for'.ljust(width)}{accounted / overhead:7.0%}")
    floor, peer = _peers(scope, bare, rounds, number)
    print(f"  {'floor: posthog new_context + identify_context'.ljust(width)}{floor:7.2f}")
    print(f"  {'peer: PosthogASGIMiddleware - bare app'.ljust(width)}{peer:7.2f}")
    ratios = f"{overhead / floor:6.2f}x {overhead / peer:5.2f}x"
    print(f"  {'ours / floor, ours / peer'.ljust(width)}{ratios}")
    print()
    _wsgi_ladder(cookie, rounds, number)
    print()
    _detail(engine, scope, cookie, rounds, number)


def _consume(result: Any) -> None:
    """What a WSGI server does with the app's iterable: iterate it, close it."""
    try:
        for _chunk in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def _wsgi_ladder(cookie: str, rounds: int, number: int) -> None:
    """The same request through the WSGI adapter, rung by rung, as
    `wsgi.IdentityMiddleware.__call__` takes it."""
    from functools import partial

    from posthog_identity.context import bind
    from posthog_identity.exchange import Exchange, RequestInfo
    from posthog_identity.wsgi import IdentityMiddleware, _header, _server_host
    from posthog_identity.wsgi_body import Head, run

    environ = inprocess.wsgi_environ(cookie)
    bare = inprocess.wsgi_app(JSON_BODY, "application/json")
    ours = IdentityMiddleware(bare, settings(), client=offline_client())
    engine = ours.engine
    start_response = inprocess._start_response

    def path(upto: int) -> None:
        env = environ.copy()
        get = env.get
        proxy = engine.proxy
        if proxy is not None and proxy.matches(get("PATH_INFO", "")):
            return
        if engine.bypasses(get("PATH_INFO", ""), get("REQUEST_METHOD", ""), _header, env):
            return
        if upto < 2:
            return
        where = get("PATH_INFO", "")
        request = RequestInfo(
            get("REQUEST_METHOD", "GET"),
            get("wsgi.url_scheme", "http"),
            where,
            get("HTTP_COOKIE", ""),
            get("HTTP_SEC_GPC", ""),
            get("HTTP_DNT", ""),
            get("HTTP_HOST") or _server_host(env),
            get("SCRIPT_NAME", "") + where,
            get("HTTP_USER_AGENT", ""),
            get("REMOTE_ADDR", ""),
            get("HTTP_X_FORWARDED_FOR", ""),
            get("HTTP_X_POSTHOG_SESSION_ID", ""),
            get("HTTP_X_POSTHOG_WINDOW_ID", ""),
            get("HTTP_X_POSTHOG_DISTINCT_ID", ""),
        )
        if upto < 3:
            return
        exchange = Exchange(engine, request, ours.read_user(env), env)
        if upto < 4:
            return
        exchange.identity  # noqa: B018 (bind resolves it first in the real path)
        if upto < 5:
            return
        head = Head(exchange, start_response, ours.read_user, env)
        binding = bind(exchange)
        if upto < 6:
            context = contextvars.copy_context()
            context.run(binding.__enter__)
            context.run(binding.__exit__, None, None, None)
            return
        _consume(run(bare, env, head, binding))

    steps = [
        "dispatch: proxy and bypass checks",
        "RequestInfo from the environ",
        "user source (none) and Exchange: cookie found, unsigned, parsed",
        "resolve(): the identity",
        "Head; private context, bind() and its exit",
        "the app through run() and Head: settle, Content-Type, leaves_alone",
    ]
    rungs: list[tuple[str, Callable[[], Any]]] = [
        ("copy of the environ", lambda: environ.copy()),
        *((label, partial(path, index + 1)) for index, label in enumerate(steps)),
        ("bare app alone", lambda: _consume(bare(environ.copy(), start_response))),
        ("the real middleware", lambda: _consume(ours(environ.copy(), start_response))),
        (
            "floor",
            lambda: _consume(inprocess.wsgi_floor(bare)(environ.copy(), start_response)),
        ),
    ]
    times = _ladder(rungs, rounds, number)
    copy, ladder, bare_us, real, floor = times[0], times[1:-3], times[-3], times[-2], times[-1]
    width = max(len(label) for label in steps) + 2
    print(f"WSGI, returning visitor, JSON: CPU µs per request, GC on, best of {rounds} rounds")
    before, parts = copy, []
    for label, total in zip(steps, ladder, strict=True):
        part = total - before
        if label.startswith("the app"):
            part -= bare_us - copy
        parts.append(part)
        print(f"  {label.ljust(width)}{part:7.2f}")
        before = total
    overhead = real - bare_us
    print(f"  {'sum of the steps'.ljust(width)}{sum(parts):7.2f}")
    print(f"  {'measured: real middleware - bare app'.ljust(width)}{overhead:7.2f}")
    print(f"  {'accounted for'.ljust(width)}{sum(parts) / overhead:7.0%}")
    print(f"  {'floor: posthog new_context + identify_context'.ljust(width)}{floor - bare_us:7.2f}")
    print(f"  {'ours / floor'.ljust(width)}{overhead / (floor - bare_us):6.2f}x")


def _peers(scope: dict[str, Any], bare: Any, rounds: int, number: int) -> tuple[float, float]:
    """The overhead of posthog's public context alone (the floor) and of its own
    ASGI middleware, in the same harness."""
    floor = inprocess.asgi_floor(bare)
    peer = posthog_peer(bare)
    receive, drop = inprocess._receive, inprocess._drop
    times = _ladder(
        [
            ("bare", lambda: _drive(bare(dict(scope), receive, drop))),
            ("floor", lambda: _drive(floor(dict(scope), receive, drop))),
            ("peer", lambda: _drive(peer(dict(scope), receive, drop))),
        ],
        rounds,
        number,
    )
    return times[1] - times[0], times[2] - times[0]


def _detail(engine: Any, scope: dict[str, Any], cookie: str, rounds: int, number: int) -> None:
    """Steps inside the rungs, timed alone (they need not add up to anything)."""
    import posthog
    from werkzeug.http import parse_cookie

    from posthog_identity import asgi_scope
    from posthog_identity.exchange import Exchange, RequestInfo
    from posthog_identity.html import inject, may_inject

    value = cookie.split(f"{COOKIE_NAME}=")[1].split(";")[0]
    request = RequestInfo("GET", "https", "/", cookie)
    exchange = Exchange(engine, request)
    json_headers = [("content-type", "application/json"), ("content-length", "40")]
    html_headers = [("content-type", "text/html; charset=utf-8"), ("content-length", "20480")]
    snippet = engine.snippet.render(exchange.identity)

    def posthog_context() -> None:
        with posthog.new_context(fresh=True, capture_exceptions=False):
            posthog.identify_context("x")

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("asgi: scope -> RequestInfo (header scan)", lambda: asgi_scope.request_info(scope, "/")),
        ("werkzeug parse_cookie(whole Cookie header)", lambda: parse_cookie(cookie)),
        ("CookieCodec.loads (itsdangerous unsign + parse)", lambda: engine.codec.loads(value)),
        ("Exchange: cookie read and verified", lambda: Exchange(engine, request)),
        ("... and resolve()", lambda: Exchange(engine, request).resolution),
        ("posthog.new_context + identify_context alone", posthog_context),
        ("request properties, built (at the first capture)", lambda: _properties(engine, request)),
        ("Exchange.leaves_alone(JSON)", lambda: exchange.leaves_alone("application/json")),
        ("Exchange.respond(JSON): no Set-Cookie", lambda: exchange.respond(200, json_headers)),
        ("may_inject(JSON response)", lambda: may_inject("GET", 200, json_headers)),
        ("Exchange.respond(HTML): snippet render", lambda: exchange.respond(200, html_headers)),
        ("Snippet.render alone", lambda: engine.snippet.render(exchange.identity)),
        ("inject() into a 20 KB page", lambda: inject(inprocess.HTML_BODY, snippet)),
    ]
    width = max(len(label) for label, _ in steps) + 2
    print("Inside the steps, each timed alone (CPU µs, GC on, best of the rounds):")
    for (label, _), best in zip(steps, _ladder(steps, rounds, number // 2), strict=True):
        print(f"  {label.ljust(width)}{best:7.2f}")


def _properties(engine: Any, request: Any) -> dict[str, str]:
    from posthog_identity.exchange import Exchange

    return Exchange(engine, request).request_properties()


def interleaved(rounds: int = 15, number: int = 2000) -> None:
    """Our overhead in a tight loop, and with an HTTP server's own work for each
    request run between ours (h11 parsing the request and writing the response,
    as uvicorn's h11 protocol does): the same code, but the server's code and data
    evict ours from the CPU's caches between requests, as under a real server.
    Why the servers' wrapped/bare ratio is lower than the in-process figures
    predict."""
    import h11

    from posthog_identity.asgi import IdentityMiddleware
    from posthog_identity.wsgi import IdentityMiddleware as WsgiMiddleware

    cookie = f"{OTHER_COOKIES}; {COOKIE_NAME}={identity_cookie()}; session=x"
    wire = f"GET / HTTP/1.1\r\nHost: example.com\r\nCookie: {cookie}\r\n\r\n".encode()
    receive, drop = inprocess._receive, inprocess._drop

    def server_work(body: bytes) -> None:
        connection = h11.Connection(h11.SERVER)
        connection.receive_data(wire)
        connection.next_event()  # the request
        connection.next_event()  # its end
        length = str(len(body)).encode()
        head = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", length)]
        connection.send(h11.Response(status_code=200, headers=head))
        connection.send(h11.Data(data=body))
        connection.send(h11.EndOfMessage())

    scope = inprocess.asgi_scope(cookie)
    environ = inprocess.wsgi_environ(cookie)
    start_response = inprocess._start_response

    def identity(app: Any) -> Any:
        return IdentityMiddleware(app, settings(), client=offline_client())

    def asgi(
        body: bytes, headers: Any, wrap: Callable[[Any], Any] = identity
    ) -> tuple[Callable[[], None], Callable[[], None]]:
        bare = inprocess.asgi_app(body, headers)
        ours = wrap(bare)
        return (
            lambda: _drive(bare(dict(scope), receive, drop)),
            lambda: _drive(ours(dict(scope), receive, drop)),
        )

    def wsgi(body: bytes, content_type: str) -> tuple[Callable[[], None], Callable[[], None]]:
        bare = inprocess.wsgi_app(body, content_type)
        ours = WsgiMiddleware(bare, settings(), client=offline_client())
        return (
            lambda: _consume(bare(environ.copy(), start_response)),
            lambda: _consume(ours(environ.copy(), start_response)),
        )

    def beside(request: Callable[[], None], body: bytes) -> Callable[[], None]:
        def step() -> None:
            server_work(body)
            request()

        return step

    floor, json, html = inprocess.asgi_floor, inprocess._asgi_json_headers, inprocess.HTML_BODY
    cases = (
        ("ASGI, returning visitor, JSON", JSON_BODY, asgi(JSON_BODY, json)),
        ("ASGI, returning visitor, 20 KB HTML", html, asgi(html, inprocess._asgi_html_headers)),
        ("WSGI, returning visitor, JSON", JSON_BODY, wsgi(JSON_BODY, "application/json")),
        ("ASGI, posthog's public context alone", JSON_BODY, asgi(JSON_BODY, json, floor)),
        ("ASGI, PosthogASGIMiddleware", JSON_BODY, asgi(JSON_BODY, json, posthog_peer)),
    )
    print("Overhead, CPU µs per request (GC on, best of the rounds): alone, and with a")
    print("server's own work for each request between ours (h11 parsing it, writing the answer)")
    for label, body, (bare, ours) in cases:
        rungs = [("bare", bare), ("ours", ours)]
        rungs += [("bare+server", beside(bare, body)), ("ours+server", beside(ours, body))]
        times = _ladder(rungs, rounds, number)
        tight, served = times[1] - times[0], times[3] - times[2]
        print(
            f"  {label:38s} alone {tight:6.2f}   beside a server {served:6.2f}   "
            f"x{served / tight:4.2f}   (the server's work {times[2] - times[0]:6.2f})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", nargs="?", default="asgi.ours_returning")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument(
        "--tool", choices=("pyinstrument", "cprofile", "none"), default="pyinstrument"
    )
    parser.add_argument("--html", help="also write pyinstrument's HTML report here")
    parser.add_argument("--breakdown", action="store_true", help="time the steps one by one")
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="our overhead alone and with a server's own work between requests",
    )
    args = parser.parse_args()
    if args.breakdown:
        breakdown()
    elif args.interleaved:
        interleaved()
    else:
        profile(args.case, args.requests, args.tool, args.html)
    return 0


if __name__ == "__main__":
    sys.exit(main())
