"""Fuzzing: hostile or odd input never breaks a request, a page or a header.

Hypothesis generates Cookie headers, request headers and paths, HTML bodies cut
into arbitrary chunks, and user ids; each example goes through the real
middleware of one protocol, driven in-process like a server would (the app's
chunks are passed on as they are: a list or a generator for WSGI, one
``http.response.body`` message each for ASGI). Whatever the input:

- the middleware never raises and the app's status and headers come through;
- the body is the app's own, or the app's own with exactly one snippet added
  (removing it gives the original back), placed as a one-shot injection of the
  whole body would place it, however the body was cut;
- at most one Set-Cookie is added, a single well-formed header (no CR/LF, only
  our cookie name, the configured attributes) whose value verifies.

Budget: ``POSTHOG_IDENTITY_FUZZ_EXAMPLES`` examples per target and adapter
(default 75, quick); ``nox -s fuzz`` sets it high.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import html5lib
import posthog
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posthog_identity.html import inject
from posthog_identity.identity import Identity
from posthog_identity.settings import Settings
from posthog_identity.signing import CookieState
from tests.helpers.project import API_KEY, SECRET
from tests.helpers.strict_drivers import (
    CODEC,
    HOST,
    HTML,
    OPTIONS,
    PAGE,
    Page,
    Recorder,
    Reply,
    Request,
    call_asgi,
    call_wsgi,
    middleware_for,
    our_set_cookie,
    recording_client,
)

FUZZ_EXAMPLES = int(os.environ.get("POSTHOG_IDENTITY_FUZZ_EXAMPLES", "75"))
fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

COOKIE = "ph_identity"
#: The smallest look-ahead allowed, so small bodies already cross it.
LOOKAHEAD = 1024
EXCLUDED = "/static"
ADAPTERS = ["wsgi", "asgi"]
#: RFC 7230 token characters: cookie and header names.
TOKEN = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: RFC 6265 cookie-octet: what a well-behaved cookie value is made of.
COOKIE_OCTETS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\')

SNIPPET = re.compile(rb"<script data-posthog-identity[^>]*>.*?</script>", re.DOTALL)


# ---------------------------------------------------------------------------
# The app, the middleware and a server's view of them


@dataclass
class World:
    client: posthog.Client
    recorder: Recorder
    apps: dict[str, Any]

    def middleware(self, adapter: str) -> Any:
        return self.apps[adapter]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    client, recorder = recording_client()
    config = Settings(
        secrets=(SECRET,),
        api_key=API_KEY,
        host=HOST,
        inject_lookahead=LOOKAHEAD,
        exclude_paths=(EXCLUDED,),
    )
    apps = {adapter: middleware_for(adapter, config, client) for adapter in ADAPTERS}
    yield World(client, recorder, apps)
    client.shutdown()


def call(world: World, adapter: str, request: Request, page: Page) -> Reply:
    world.recorder.events.clear()
    driver = call_wsgi if adapter == "wsgi" else call_asgi
    return driver(world.middleware(adapter), request, page)


# ---------------------------------------------------------------------------
# What every response must look like


def snippets(body: bytes) -> list[bytes]:
    return SNIPPET.findall(body)


def bootstrap(snippet: bytes) -> Any:
    """The identity our snippet puts posthog-js on."""
    script = snippet.decode()
    inner = script[script.index(">") + 1 : -len("</script>")]
    match = OPTIONS.search(inner)
    assert match is not None, script
    return json.loads(match.group(1))["identity"]


def original_or_one_snippet(out: bytes, original: bytes, snippet: bytes) -> bool:
    """True when `out` is `original` with `snippet` added once (False: untouched)."""
    if out == original:
        return False
    at = out.find(snippet)
    assert at >= 0, "the body changed, but not by our snippet"
    assert out[:at] + out[at + len(snippet) :] == original, (
        "removing the snippet does not give the original"
    )
    return True


def rendered(world: World, identity: Identity) -> bytes:
    snippet = world.middleware("wsgi").engine.snippet
    assert snippet is not None
    return bytes(snippet.render(identity))


def anonymous_cookie(anonymous_id: str | None = None) -> str:
    """A fresh, valid cookie for an anonymous visitor."""
    state = CookieState(anonymous_id or str(uuid.uuid4()), None, False, int(time.time()))
    return CODEC.dumps(state)


# ---------------------------------------------------------------------------
# Cookie headers

#: Valid cookies of three known visitors, among the noise.
KNOWN = [str(uuid.UUID(int=n)) for n in (1, 2, 3)]
VALID_COOKIES = [anonymous_cookie(anonymous_id) for anonymous_id in KNOWN]


def _tamper(value: str, at: int, char: str) -> str:
    at %= len(value)
    return value[:at] + char + value[at + 1 :]


cookie_names = st.one_of(
    st.just(COOKIE),
    st.text(alphabet=TOKEN, min_size=1, max_size=16),
    st.sampled_from([COOKIE.upper(), f"{COOKIE}_", f"x{COOKIE}", f"{COOKIE}2", "$Version"]),
)
cookie_values = st.one_of(
    st.text(alphabet=COOKIE_OCTETS, max_size=80),
    st.sampled_from(VALID_COOKIES),
    st.builds(
        _tamper, st.sampled_from(VALID_COOKIES), st.integers(0, 200), st.sampled_from("A.-_z")
    ),
    st.sampled_from(VALID_COOKIES).map(lambda v: v + "x"),
)


def _crowd(count: int, seed: int, mixed_in: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Hundreds of other cookies (cheap to generate), with the drawn ones spread among them."""
    rng = random.Random(seed)
    pairs = [
        (f"{rng.choice(['_ga', 'tracker', 'sess', 'x'])}{i}", f"{rng.getrandbits(64):x}")
        for i in range(count)
    ]
    for pair in mixed_in:
        pairs.insert(rng.randrange(len(pairs) + 1), pair)
    return pairs


cookie_pair = st.tuples(cookie_names, cookie_values)
cookie_pairs = st.one_of(
    st.lists(cookie_pair, max_size=12),
    # Hundreds of cookies, as on a site with too many trackers.
    st.builds(_crowd, st.integers(100, 400), st.integers(), st.lists(cookie_pair, max_size=6)),
)
well_formed_cookies = cookie_pairs.map(lambda pairs: "; ".join(f"{n}={v}" for n, v in pairs))
garbage_cookies = st.one_of(
    # Any latin-1 text: what a server may hand over as the header's value.
    st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=300),
    st.lists(
        st.one_of(
            st.sampled_from([";", "=", '"', "\\", ",", " ", "\t", "\x00", "é", "ÿ", COOKIE]),
            st.sampled_from(VALID_COOKIES),
            st.sampled_from(VALID_COOKIES).map(lambda v: f' {COOKIE}="{v}"'),
            st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=10),
        ),
        max_size=60,
    ).map("".join),
    # Huge: far beyond any cookie a browser would keep.
    st.builds(
        lambda n, c, prefix: prefix + c * n,
        st.integers(4_000, 70_000),
        st.sampled_from("A.-_=%é"),
        st.sampled_from([f"{COOKIE}=", "other=", "", f"{COOKIE}={VALID_COOKIES[0]}; x="]),
    ),
)


def _first_valid(header_values: list[str]) -> str | None:
    """The anonymous id of the first well-formed pair of ours that verifies."""
    for header in header_values:
        for pair in header.split("; "):
            name, _, value = pair.partition("=")
            if name == COOKIE:
                verified = CODEC.loads(value)
                if verified is not None:
                    return verified.state.anonymous_id
    return None


def check_identity_page(world: World, reply: Reply, expected_anonymous: str | None) -> None:
    """A plain visit: the page with exactly one snippet, for a known or a new visitor."""
    assert reply.status == 200
    cookie = our_set_cookie(reply, Page().headers)
    if expected_anonymous is None:
        assert cookie is not None, "a new visitor gets a cookie"
        anonymous_id = cookie.state.anonymous_id
        assert anonymous_id not in KNOWN
        assert cookie.state.user_hash is None
    else:
        assert cookie is None, "a returning visitor gets no Set-Cookie"
        anonymous_id = expected_anonymous
    snippet = rendered(world, Identity(anonymous_id))
    assert original_or_one_snippet(reply.body, PAGE, snippet)
    [found] = snippets(reply.body)
    assert bootstrap(found) == {"anonymous": anonymous_id, "user": None, "signedIn": False}
    assert reply.named("Content-Length") == [str(len(reply.body))]
    [event] = world.recorder.events
    assert event["distinct_id"] == anonymous_id


@pytest.mark.parametrize("adapter", ADAPTERS)
@fuzz
@given(headers=st.lists(well_formed_cookies, min_size=1, max_size=3))
def test_well_formed_cookie_headers_use_the_first_cookie_of_ours_that_verifies(
    world: World, adapter: str, headers: list[str]
) -> None:
    request = Request(headers=[("Cookie", h) for h in headers])
    if adapter == "wsgi":
        headers = ["; ".join(headers)]

    reply = call(world, adapter, request, Page())

    check_identity_page(world, reply, _first_valid(headers))


def _utf8(headers: list[str]) -> bool:
    """Whether the header's bytes (latin-1 in WSGI and ASGI) are UTF-8, as browsers send."""
    try:
        "".join(headers).encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("adapter", ADAPTERS)
@fuzz
@given(headers=st.lists(garbage_cookies, min_size=1, max_size=3))
def test_garbage_cookie_headers_never_break_a_request(
    world: World, adapter: str, headers: list[str]
) -> None:
    request = Request(headers=[("Cookie", h) for h in headers])

    reply = call(world, adapter, request, Page())

    assert reply.status == 200
    cookie = our_set_cookie(reply, Page().headers)
    found = snippets(reply.body)
    if not _utf8(headers):
        # See test_a_quoted_cookie_in_a_header_that_is_not_utf8_is_still_read: such
        # a request may pass through untouched today, which is still the original page.
        assert found == [] or len(found) == 1
        if not found:
            assert reply.body == PAGE
            assert cookie is None
            return
    [snippet] = found
    identity = bootstrap(snippet)
    if cookie is None:
        # Kept: only a cookie that verifies, and it was in the header.
        assert identity["anonymous"] in KNOWN
        assert VALID_COOKIES[KNOWN.index(identity["anonymous"])] in "".join(headers)
    else:
        assert identity["anonymous"] == cookie.state.anonymous_id
    assert original_or_one_snippet(reply.body, PAGE, rendered(world, Identity(**_kw(identity))))


def _kw(identity: dict[str, Any]) -> dict[str, Any]:
    return {"anonymous_id": identity["anonymous"], "user_id": identity["user"]}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_cookie_header_with_bytes_that_are_not_utf8_keeps_our_cookie(
    world: World, adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    # obs-text (0x80-0xFF) is allowed in header values; servers pass it on as latin-1.
    request = Request(headers=[("Cookie", f"legacy=caf\xe9; {COOKIE}={VALID_COOKIES[0]}")])

    reply = call(world, adapter, request, Page())

    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    check_identity_page(world, reply, KNOWN[0])


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_quoted_cookie_in_a_header_that_is_not_utf8_is_still_read(
    world: World, adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    header = f'legacy=caf\xe9; {COOKIE}="{VALID_COOKIES[0]}"'
    request = Request(headers=[("Cookie", header)])

    reply = call(world, adapter, request, Page())

    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    check_identity_page(world, reply, KNOWN[0])


# ---------------------------------------------------------------------------
# Request headers, methods and paths

header_names = st.one_of(
    st.sampled_from(
        [
            "X-POSTHOG-DISTINCT-ID",
            "X-POSTHOG-SESSION-ID",
            "X-Forwarded-Proto",
            "X-User",
            "Host",
            "Accept",
            "Accept-Encoding",
            "If-None-Match",
            "Range",
            "Content-Type",
            "Authorization",
            "Cookie2",
        ]
    ),
    st.text(alphabet=TOKEN, min_size=1, max_size=24),
)
header_values = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=200),
    st.sampled_from(["https", "gzip", "bytes=0-10", "<script>alert(1)</script>", "\r\n"]),
)
methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
    st.text(alphabet=TOKEN, min_size=1, max_size=10),
)
paths = st.one_of(
    st.text(max_size=60).map(lambda s: "/" + s),
    st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=60),
    st.sampled_from(
        [
            EXCLUDED,
            EXCLUDED + "/",
            EXCLUDED + "/app.css",
            EXCLUDED + "ky",
            "/STATIC/app.css",
            "//static/x",
            "/%2e%2e/static",
            EXCLUDED + "/../page",
            "",
            "*",
        ]
    ),
)
STANDARD = {"GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"}


@pytest.mark.parametrize("adapter", ADAPTERS)
@fuzz
@given(
    method=methods,
    path=paths,
    scheme=st.sampled_from(["http", "https"]),
    headers=st.lists(st.tuples(header_names, header_values), max_size=20),
)
def test_any_request_headers_method_and_path_never_break_a_request(
    world: World,
    adapter: str,
    method: str,
    path: str,
    scheme: str,
    headers: list[tuple[str, str]],
) -> None:
    headers = [(n, v) for n, v in headers if n.lower() != "cookie"]
    request = Request(method, path, scheme, headers)

    reply = call(world, adapter, request, Page())

    assert reply.status == 200
    excluded = path == EXCLUDED or path.startswith(EXCLUDED + "/")
    if excluded:
        assert our_set_cookie(reply, Page().headers) is None
        assert reply.body == PAGE
        return
    cookie = our_set_cookie(reply, Page().headers, secure=scheme == "https")
    assert cookie is not None
    anonymous_id = cookie.state.anonymous_id
    snippet = rendered(world, Identity(anonymous_id))
    injected = original_or_one_snippet(reply.body, PAGE, snippet)
    if method.upper() == "HEAD":
        assert not injected
    elif method in STANDARD:
        assert injected
    [event] = world.recorder.events
    assert event["distinct_id"] == anonymous_id


# ---------------------------------------------------------------------------
# HTML, in any chunks

FRAGMENTS = [
    b"<html>",
    b"<head>",
    b"</head>",
    b"</HEAD>",
    b"</head >",
    b"</head\n>",
    b"</header>",
    b"</head",
    b"<body>",
    b"<BODY class=x>",
    b"<body/>",
    b"<bodyx>",
    b"<body",
    b"<!--",
    b"-->",
    b"<script>",
    b"</script>",
    b"data-posthog-identity",
    b"<script data-posthog-identity>",
    b"</he",
    b"ad>",
    b"\xef\xbb\xbf",
    b"\x00",
    b"\xff\xfe",
    "é€😀".encode(),
    b"<",
    b">",
    b"/",
    b"\r\n",
]
html_bodies = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.binary(max_size=40),
        st.text(max_size=30).map(str.encode),
        # Padding that pushes what follows past the look-ahead.
        st.integers(200, 1500).map(lambda n: b"x" * n),
    ),
    max_size=40,
).map(b"".join)
CONTENT_TYPES = [
    HTML,
    "text/html",
    "TEXT/HTML; charset=latin-1",
    "text/html;charset=utf-8",
    "application/xhtml+xml",
    "text/plain",
    "application/json",
    "",
]


def _cut(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    pieces = [body[a:b] for a, b in itertools.pairwise(points)]
    return pieces or [b""]


@pytest.mark.parametrize("adapter", ADAPTERS)
@fuzz
@given(
    body=html_bodies,
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
    empty_chunks=st.lists(st.integers(0, 40), max_size=3),
    status=st.sampled_from([200, 200, 200, 201, 404, 500, 204, 206, 302, 304]),
    content_type=st.sampled_from(CONTENT_TYPES),
    encoding=st.sampled_from([None, None, "identity", "gzip"]),
    declare_length=st.booleans(),
    method=st.sampled_from(["GET", "GET", "POST", "HEAD"]),
    streamed=st.booleans(),
)
def test_any_html_in_any_chunks_gets_the_original_or_exactly_one_snippet(
    world: World,
    adapter: str,
    body: bytes,
    cuts: list[int],
    empty_chunks: list[int],
    status: int,
    content_type: str,
    encoding: str | None,
    declare_length: bool,
    method: str,
    streamed: bool,
) -> None:
    chunks = _cut(body, cuts)
    for at in empty_chunks:
        chunks.insert(at % (len(chunks) + 1), b"")
    headers = [("Content-Type", content_type)] if content_type else []
    if encoding is not None:
        headers.append(("Content-Encoding", encoding))
    if declare_length:
        headers.append(("Content-Length", str(len(body))))
    page = Page(body, chunks, status, headers, streamed)

    reply = call(world, adapter, Request(method=method), page)

    assert reply.status == status
    cookie = our_set_cookie(reply, headers)
    assert cookie is not None
    snippet = rendered(world, Identity(cookie.state.anonymous_id))
    injected = original_or_one_snippet(reply.body, body, snippet)
    # However the body was cut: what a one-shot injection of the whole body gives.
    assert reply.body == (inject(body, snippet, LOOKAHEAD) if injected else body)
    if injected:
        after = reply.body[reply.body.index(snippet) + len(snippet) :]
        assert re.match(rb"</head[\s>]|<body[\s>/]", after, re.IGNORECASE)
        assert method != "HEAD"
        assert status in (200, 201, 404, 500)
        assert encoding in (None, "identity")
        assert content_type.lower().startswith("text/html")
    lengths = reply.named("Content-Length")
    assert lengths == ([str(len(reply.body))] if declare_length else [])


# ---------------------------------------------------------------------------
# User ids

BREAKERS = [
    "</script><script>alert(1)</script>",
    "</SCRIPT>",
    "<!--<script>",
    "\u2028\u2029",
    "a\r\nSet-Cookie: evil=1",
    "a\nLocation: https://evil.example",
    "x; Domain=evil.example; Path=/",
    '"; alert(1); "',
    "\\u003c/script>",
    "]]>",
    "\x00",
]
user_ids = st.one_of(
    st.text(min_size=1),
    st.text(alphabet="\r\n;,=\t \"'<>/&\\\x00\x7f", min_size=1, max_size=20),
    st.builds(str.__add__, st.sampled_from(BREAKERS), st.text(max_size=10)),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.uuids(),
    # 10 KB ids.
    st.text(min_size=1, max_size=8).map(lambda s: (s * 10_240)[:10_240]),
    st.just(""),
)


def _as_id(value: object) -> str | None:
    """What the id counts as: its string, or None (reports nothing)."""
    if isinstance(value, (int, uuid.UUID)) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


def _scripts(body: bytes) -> list[str]:
    """Our script elements, as a browser's HTML parser finds them: their text."""
    # Decoded as the response's Content-Type says (html5lib would guess windows-1252).
    document = html5lib.parse(body.decode("utf-8"), namespaceHTMLElements=False)
    return [
        element.text or ""
        for element in document.iter("script")
        if "data-posthog-identity" in element.attrib
    ]


@pytest.mark.parametrize("adapter", ADAPTERS)
@fuzz
@given(user=user_ids, how=st.sampled_from(["identify_user", "callback"]))
def test_any_user_id_logs_in_with_one_well_formed_cookie_and_an_inert_snippet(
    world: World, adapter: str, user: object, how: str
) -> None:
    anonymous_id = str(uuid.uuid4())
    request = Request(headers=[("Cookie", f"{COOKIE}={anonymous_cookie(anonymous_id)}")])
    page = Page(identify=user) if how == "identify_user" else Page(user=user)

    reply = call(world, adapter, request, page)

    assert reply.status == 200
    user_id = _as_id(user)
    cookie = our_set_cookie(reply, Page().headers)
    if user_id is None:
        assert cookie is None, "an invalid id reports nothing: the cookie stands"
        identity = Identity(anonymous_id)
    else:
        assert cookie is not None
        assert cookie.state.anonymous_id == anonymous_id
        assert cookie.state.user_hash == CODEC.user_hash(user_id)
        assert cookie.state.linked
        identity = Identity(anonymous_id, user_id, signed_in=True)
    assert original_or_one_snippet(reply.body, PAGE, rendered(world, identity))
    [script] = _scripts(reply.body)
    match = OPTIONS.search(script)
    assert match is not None
    assert json.loads(match.group(1))["identity"] == {
        "anonymous": anonymous_id,
        "user": user_id,
        "signedIn": user_id is not None,
    }
    events = {event["event"]: event for event in world.recorder.events}
    assert events["Fuzzed"]["distinct_id"] == identity.distinct_id
    if user_id is not None:
        link = events["$create_alias"]
        assert link["distinct_id"] == user_id
        assert link["properties"]["alias"] == anonymous_id


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_int_id_too_long_to_print_reports_nothing(world: World, adapter: str) -> None:
    anonymous_id = str(uuid.uuid4())
    request = Request(headers=[("Cookie", f"{COOKIE}={anonymous_cookie(anonymous_id)}")])

    reply = call(world, adapter, request, Page(identify=10**5000))

    assert reply.status == 200
    assert our_set_cookie(reply, Page().headers) is None
    [snippet] = snippets(reply.body)
    assert bootstrap(snippet)["user"] is None
