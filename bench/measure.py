"""Timing and statistics: calibrated rounds, medians with their spread, paired ratios."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: `run(n)` performs n operations and returns the nanoseconds they took, timed
#: inside with `time.perf_counter_ns` so set-up and tear-down are excluded.
Runner = Callable[[int], int]


@dataclass(frozen=True)
class Plan:
    """How hard to measure: the full run and `--quick` differ only here."""

    rounds: int
    round_seconds: float  #: target duration of one timed round
    warmup_seconds: float
    #: Timed with the collector on, as servers run; off only as a diagnostic.
    disable_gc: bool = False


@dataclass
class Series:
    """Per-round samples of one quantity, summarised as median and spread."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def q1(self) -> float:
        return quantile(self.samples, 0.25)

    @property
    def q3(self) -> float:
        return quantile(self.samples, 0.75)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def summary(self) -> dict[str, float | list[float]]:
        return {
            "median": self.median,
            "q1": self.q1,
            "q3": self.q3,
            "min": self.low,
            "max": self.high,
            "samples": self.samples,
        }


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), defined for one sample too."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def paired(a: Series, b: Series, combine: Callable[[float, float], float]) -> Series:
    """Round-by-round combination of two series measured side by side (a difference, a ratio).

    Pairing cancels slow drifts of the machine (other jobs, frequency changes)
    that affect two neighbouring measurements alike.
    """
    return Series([combine(x, y) for x, y in zip(a.samples, b.samples, strict=True)])


def calibrate(run: Runner, round_seconds: float, warmup_seconds: float) -> int:
    """Warm up, then return how many operations make a round of about `round_seconds`."""
    n, spent = 1, 0
    warmup_ns = warmup_seconds * 1e9
    while True:
        elapsed = max(run(n), 1)
        spent += elapsed
        if elapsed >= 0.02 * 1e9 or n >= 1 << 24:
            if spent >= warmup_ns:
                break
        else:
            n *= 4
    return max(1, int(n * round_seconds * 1e9 / elapsed))


def timed_round(run: Runner, n: int, disable_gc: bool) -> tuple[float, float, float]:
    """One round: wall-clock ns per operation, CPU ns per operation, cyclic garbage per operation.

    The wall clock (`perf_counter_ns`, inside `run`) is the figure; this
    thread's CPU time over the same round is its noise check: on a machine
    busy with other work, wall time grows whenever the OS runs someone else,
    CPU time much less.

    The collector runs before the round so no earlier garbage is collected on
    our clock. With `disable_gc` it stays off while timing, and the garbage
    found right after the round tells what the round left for it (0 means the
    code under test frees everything by reference counting, so disabling the
    collector hid no cost of its own).
    """
    gc.collect()
    if disable_gc:
        gc.disable()
    try:
        cpu = time.thread_time_ns()
        elapsed = run(n)
        cpu = time.thread_time_ns() - cpu
    finally:
        if disable_gc:
            gc.enable()
    garbage = gc.collect() if disable_gc else 0
    return elapsed / n, cpu / n, garbage / n


def now_ns() -> int:
    return time.perf_counter_ns()
