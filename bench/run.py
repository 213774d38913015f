"""Benchmarks of posthog-identity against the middleware its users already run.

    python bench/run.py                 # full run (a few minutes): bench/results.json, docs table
    python bench/run.py --quick         # smoke run (CI): same code paths, tiny sizes, temp outputs
    python bench/run.py --only inprocess --out /tmp/again.json

Prints the tables, writes every number (with per-round samples) as JSON and
rewrites the results block of docs/performance.md. Targets are reported as
PASS/MISS and never asserted: the exit status is non-zero only when something
broke (a case misbehaved, a server did not start, an exception).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import chart
import injection
import inprocess
import proxy_latency
import proxy_storm
import report
import servers
from measure import Plan

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
DOCS = ROOT / "docs" / "performance.md"
PARTS = ("inprocess", "injection", "memory", "servers", "proxy")
MiB = injection.MiB
KiB = injection.KiB


@dataclass(frozen=True)
class Scale:
    """How much of everything: the full run and `--quick` differ only here."""

    inprocess: Plan
    injection: Plan
    injection_sizes: list[int]
    memory_sizes: list[int]
    servers: servers.Load
    proxy_requests: int
    storm_uploads: int
    storm_size: int
    storm_idle: float  #: seconds of probing the app before the storm


FULL = Scale(
    inprocess=Plan(rounds=21, round_seconds=0.05, warmup_seconds=0.3),
    injection=Plan(rounds=9, round_seconds=0.1, warmup_seconds=0.2),
    injection_sizes=[MiB, 100 * MiB],
    memory_sizes=[MiB, 10 * MiB, 100 * MiB],
    servers=servers.Load(duration=4.0, warmup=0.5, rounds=5),
    proxy_requests=500,
    storm_uploads=proxy_storm.UPLOADS,
    storm_size=proxy_storm.UPLOAD_SIZE,
    storm_idle=proxy_storm.IDLE_SECONDS,
)
QUICK = Scale(
    inprocess=Plan(rounds=3, round_seconds=0.01, warmup_seconds=0.01),
    injection=Plan(rounds=3, round_seconds=0.01, warmup_seconds=0.01),
    injection_sizes=[MiB],
    memory_sizes=[MiB, 2 * MiB],
    servers=servers.Load(duration=0.3, warmup=0.1, rounds=1),
    proxy_requests=20,
    storm_uploads=20,
    storm_size=64 * KiB,
    storm_idle=0.5,
)
CHUNKS = [4 * KiB, 16 * KiB, 64 * KiB]
VERSIONS = (
    "posthog-identity",
    "posthog",
    "starlette",
    "flask",
    "werkzeug",
    "itsdangerous",
    "uvicorn",
    "gunicorn",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def meta(args: argparse.Namespace, plan: Scale) -> dict[str, Any]:
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    inproc = plan.inprocess
    gc_policy = "off while timing" if inproc.disable_gc else "on"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "machine": _cpu_model(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "load_before": _load_average(),
        "load_after": None,
        "gc": gc_policy,
        "plans": {
            "inprocess": vars(inproc),
            "injection": vars(plan.injection),
            "servers": vars(plan.servers),
        },
        "method": (
            f"In process: {inproc.rounds} interleaved rounds of "
            f"~{inproc.round_seconds * 1000:g} ms per case after warm-up, "
            f"garbage collector {gc_policy}; overheads and ratios are medians of "
            "per-round differences and ratios against the baseline timed in the same round."
        ),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    if args.gc_off:
        plan = replace(
            plan,
            inprocess=replace(plan.inprocess, disable_gc=True),
            injection=replace(plan.injection, disable_gc=True),
        )
    parts = args.only or list(PARTS)
    summary: dict[str, Any] = {"meta": meta(args, plan)}

    if "inprocess" in parts:
        log("in-process ASGI and WSGI ...")
        loop = asyncio.new_event_loop()
        try:
            cases = inprocess.asgi_cases(loop) + inprocess.wsgi_cases()
            measured = inprocess.measure(cases, plan.inprocess, log)
        finally:
            loop.close()
        summary["inprocess"] = report.inprocess_rows(measured)
        summary["comparisons"] = report.ratio_targets(measured)
        summary["captured_event"] = [
            cost
            for cost in (
                report.captured_event_cost(summary["inprocess"], p) for p in ("asgi", "wsgi")
            )
            if cost is not None
        ]

    if "injection" in parts:
        log("injection throughput ...")
        rows = injection.throughput(plan.injection_sizes, CHUNKS, plan.injection)
        rows += injection.throughput([MiB], CHUNKS, plan.injection, head=False)
        summary["throughput"] = report.throughput_rows(rows)

    if "memory" in parts:
        log("injection peak memory ...")
        summary["memory"] = report.memory_rows(
            injection.memory(plan.memory_sizes, [4 * KiB, 64 * KiB])
        )

    if "servers" in parts:
        log("real servers ...")
        results = servers.measure(["uvicorn", "gunicorn"], plan.servers, args.load_tool, log)
        summary["servers"] = report.server_rows(results)
        api = servers.measure_api(plan.servers, args.load_tool, log)
        summary["servers_api"] = report.api_row(api)

    if "proxy" in parts:
        log("first-party proxy latency ...")
        latency = proxy_latency.measure(plan.proxy_requests)
        summary["proxy"] = {
            "requests": latency.requests,
            "direct_ms": latency.direct_ms,
            "proxied_ms": latency.proxied_ms,
            "added_ms": {q: latency.added(q) for q in ("p50", "p95")},
        }
        log("first-party proxy under a storm of uploads ...")
        summary["proxy_storm"] = [
            proxy_storm.as_row(
                proxy_storm.measure(
                    kind,
                    plan.storm_uploads,
                    plan.storm_size,
                    log,
                    floor=floor,
                    idle=plan.storm_idle,
                )
            )
            for kind in ("uvicorn", "gunicorn")
            for floor in (False, True)
        ]

    summary["meta"]["load_after"] = _load_average()
    summary["targets"] = report.targets(summary)
    return summary


def write(summary: dict[str, Any], out: Path, markdown: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    chart.draw(summary, markdown.parent / chart.CHART)
    page = markdown.read_text()
    markdown.write_text(report.replace_block(page, report.markdown(summary)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, seconds")
    parser.add_argument("--out", type=Path, help=f"JSON results (default {RESULTS.name})")
    parser.add_argument(
        "--markdown",
        type=Path,
        help="Markdown page whose bench:start/end block is rewritten (default docs/performance.md)",
    )
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts")
    parser.add_argument("--load-tool", choices=("auto", "python", "wrk"), default="auto")
    parser.add_argument(
        "--gc-off",
        action="store_true",
        help="a diagnostic: the garbage collector off while timing (servers run with it on)",
    )
    args = parser.parse_args(argv)

    # Smoke and partial runs must not overwrite the published numbers unless asked.
    scratch = None
    if args.quick or args.only:
        scratch = Path(tempfile.mkdtemp(prefix="posthog-identity-bench-"))
    out = args.out or (scratch / "results.json" if scratch else RESULTS)
    markdown = args.markdown
    if markdown is None:
        markdown = DOCS
        if scratch:
            markdown = scratch / DOCS.name
            markdown.write_text(DOCS.read_text())

    try:
        report.check_replace_block()
        started = time.monotonic()
        summary = run(args)
        summary["meta"]["seconds"] = round(time.monotonic() - started, 1)
        print(report.text(summary))
        write(summary, out, markdown)
    except Exception:
        traceback.print_exc()
        log("benchmark FAILED (this is an error, not a missed target)")
        return 1
    log(f"wrote {out} and the results block of {markdown} in {summary['meta']['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
