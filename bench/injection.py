"""The HTML injector on long streamed bodies: throughput, and peak memory by tracemalloc.

A body is a first chunk holding the page's head (its ``</head>`` a few hundred
bytes in, as in a real page) followed by filler chunks. The naive alternative
buffers the whole body and replaces once:
``b"".join(chunks).replace(b"</head>", snippet + b"</head>", 1)``.
"""

from __future__ import annotations

import functools
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from common import html_page
from measure import Plan, Runner, Series, calibrate, now_ns, timed_round
from posthog_identity.html import DEFAULT_LOOKAHEAD, HtmlInjector
from posthog_identity.identity import Identity
from posthog_identity.snippet import Snippet

KiB = 1024
MiB = 1024 * KiB

SNIPPET = Snippet("phc_bench_project_key", "https://us.i.posthog.com").render(
    Identity("0b0c6b5e-2a4c-4d5e-9f3a-1c2d3e4f5a6b")
)
_FILLER = html_page(64 * KiB)[-60 * KiB :]  # paragraphs, no tag the injector looks for


def chunks(body_size: int, chunk_size: int, *, head: bool = True) -> list[bytes]:
    """The body as a list of chunk references (the filler chunk object is shared)."""
    if body_size % chunk_size:
        raise ValueError("the body size must be a multiple of the chunk size")
    first = html_page(chunk_size, head=head)
    filler = (_FILLER * (chunk_size // len(_FILLER) + 1))[:chunk_size]
    return [first] + [filler] * (body_size // chunk_size - 1)


def fresh_chunks(body_size: int, chunk_size: int, *, head: bool = True) -> Iterator[bytes]:
    """The same body, each chunk a new object freed once consumed: what a server streams.

    The templates are built here, before the generator is first advanced, so a
    measurement that starts after this call sees only the chunks themselves.
    """
    first = bytearray(html_page(chunk_size, head=head))
    filler = bytearray((_FILLER * (chunk_size // len(_FILLER) + 1))[:chunk_size])

    def generate() -> Iterator[bytes]:
        yield bytes(first)
        for _ in range(body_size // chunk_size - 1):
            yield bytes(filler)

    return generate()


def stream(body: Iterable[bytes], lookahead: int = DEFAULT_LOOKAHEAD) -> int:
    """Pass a body through `HtmlInjector` the way an adapter does; returns bytes out."""
    injector = HtmlInjector(SNIPPET, lookahead)
    feed = injector.feed
    total = 0
    for chunk in body:
        for piece in feed(chunk):
            total += len(piece)
        # A server lets go of a chunk once sent; without this `del`, the loop
        # would hold it while the next one is produced and count it twice.
        del chunk
    return total + sum(map(len, injector.finish()))


def naive(body: Iterable[bytes]) -> int:
    return len(b"".join(body).replace(b"</head>", SNIPPET + b"</head>", 1))


@dataclass
class Throughput:
    label: str
    body_size: int
    chunk_size: int
    head: bool
    ours: Series = field(default_factory=Series)  # bytes per second, per round
    naive: Series = field(default_factory=Series)


def _runner(work: Callable[[list[bytes]], int], body: list[bytes], expected: int) -> Runner:
    def run(n: int) -> int:
        start = now_ns()
        for _ in range(n):
            out = work(body)
        elapsed = now_ns() - start
        if out != expected:
            raise AssertionError(f"{out} bytes out, expected {expected}")
        return elapsed

    return run


def throughput(
    sizes: Iterable[int], chunk_sizes: Iterable[int], plan: Plan, *, head: bool = True
) -> list[Throughput]:
    results = []
    for body_size in sizes:
        for chunk_size in chunk_sizes:
            body = chunks(body_size, chunk_size, head=head)
            expected = body_size + (len(SNIPPET) if head else 0)
            ours = _runner(stream, body, expected)
            buffered = _runner(naive, body, expected)
            # One pass over a 100 MiB body is a round of its own.
            n_ours = calibrate(ours, plan.round_seconds, plan.warmup_seconds)
            n_naive = calibrate(buffered, plan.round_seconds, plan.warmup_seconds)
            label = f"{_size(body_size)} in {_size(chunk_size)} chunks"
            result = Throughput(label, body_size, chunk_size, head)
            for _ in range(plan.rounds):
                ns, _cpu, _garbage = timed_round(ours, n_ours, plan.disable_gc)
                result.ours.samples.append(body_size / ns * 1e9)
                ns, _cpu, _garbage = timed_round(buffered, n_naive, plan.disable_gc)
                result.naive.samples.append(body_size / ns * 1e9)
            results.append(result)
            del body
    return results


@dataclass
class Memory:
    body_size: int
    chunk_size: int
    head: bool
    ours: int  # peak bytes allocated while streaming, beyond what was live before
    naive: int | None
    bound: int  # look-ahead + one chunk + the snippet the output must carry


def peak(work: Callable[[Iterable[bytes]], int], body: Callable[[], Iterator[bytes]]) -> int:
    """Peak traced allocation of `work` over a lazily produced body."""
    source = body()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        work(source)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def memory(
    sizes: Iterable[int], chunk_sizes: Iterable[int], *, naive_too: bool = True
) -> list[Memory]:
    results = []
    for head in (True, False):
        for chunk_size in chunk_sizes:
            for body_size in sizes:
                body = functools.partial(fresh_chunks, body_size, chunk_size, head=head)
                ours = peak(stream, body)
                buffered = peak(naive, body) if naive_too and head else None
                bound = DEFAULT_LOOKAHEAD + chunk_size + len(SNIPPET)
                results.append(Memory(body_size, chunk_size, head, ours, buffered, bound))
    return results


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"
