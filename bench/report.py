"""From measurements to numbers, verdicts and tables (text for the terminal, Markdown for the docs).

`summarise` turns the raw measurements into one JSON-able dict; both renderers
read only that dict, so the docs table can be rebuilt from a results file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from measure import Series, paired

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"

#: What reading the browser's session from posthog-js's cookie may add.
SESSION_COST_US = 1.5
TARGET_INJECTION_MBPS = 1000.0
TARGET_SERVER_RATIOS = {"uvicorn": 0.80, "gunicorn": 0.88}
#: In-process targets, each a ratio of two overheads measured in the same run
#: (absolute figures move 4x between machines; these ratios do not):
#: (label, numerator case, denominator case, goal, "at_least" or "at_most").
RATIO_TARGETS: list[tuple[str, str, str, float | None, str]] = [
    (
        "ASGI: PosthogASGIMiddleware ÷ ours (returning visitor)",
        "asgi.posthog_asgi",
        "asgi.ours_returning",
        1.0,
        "at_least",
    ),
    (
        "ASGI: ours ÷ posthog's public context alone (stretch)",
        "asgi.ours_returning",
        "asgi.posthog_floor",
        2.0,
        "at_most",
    ),
    (
        "WSGI: ours ÷ posthog's public context alone",
        "wsgi.ours_returning",
        "wsgi.posthog_floor",
        3.6,
        "at_most",
    ),
    (
        "Flask app: its session read ÷ ours around it",
        "wsgi.flask_session",
        "wsgi.flask_ours",
        2.0,
        "at_least",
    ),
    (
        "ASGI: Starlette SessionMiddleware ÷ ours (returning visitor)",
        "asgi.starlette_session",
        "asgi.ours_returning",
        None,
        "at_least",
    ),
    (
        "ASGI: PosthogASGIMiddleware ÷ ours, one event captured",
        "asgi.posthog_capture",
        "asgi.ours_capture",
        None,
        "at_least",
    ),
    *(
        entry
        for protocol in ("ASGI", "WSGI")
        for entry in (
            (
                f"{protocol}: 20 KB HTML with the snippet ÷ ours on JSON",
                f"{protocol.lower()}.ours_html",
                f"{protocol.lower()}.ours_returning",
                2.0,
                "at_most",
            ),
            (
                f"{protocol}: first visit ÷ returning visitor",
                f"{protocol.lower()}.ours_first_visit",
                f"{protocol.lower()}.ours_returning",
                2.0,
                "at_most",
            ),
            (
                f"{protocol}: API call adopting posthog-js's id ÷ first visit",
                f"{protocol.lower()}.ours_adopt",
                f"{protocol.lower()}.ours_first_visit",
                1.0,
                "at_most",
            ),
        )
    ),
]
#: The proxy storm (1,000 concurrent 1 MiB uploads): uvicorn's peak RSS growth, and the
#: app's own median latency during the storm against idle.
STORM_RSS_MIB = 64
STORM_LATENCY_RATIO = 3.0
DASH = "\N{EN DASH}"

Row = dict[str, Any]


# --------------------------------------------------------------------------- summaries


def inprocess_rows(measured: dict[str, Any]) -> list[Row]:
    """One row per case: time per request, and its overhead and ratio to its baseline."""
    rows = []
    for key, m in measured.items():
        case = m.case
        row: Row = {
            "key": key,
            "label": case.label,
            "role": case.role,
            "note": case.note,
            "baseline": case.baseline,
            "requests_per_round": m.per_op,
            "ns": m.ns.summary(),
            "cpu_ns": m.cpu.summary(),
            "garbage_per_request": m.garbage.median,
            "overhead_ns": None,
            "ratio": None,
        }
        if case.baseline is not None:
            base = measured[case.baseline].ns
            row["overhead_ns"] = paired(m.ns, base, lambda a, b: a - b).summary()
            row["ratio"] = paired(m.ns, base, lambda a, b: a / b).summary()
        rows.append(row)
    return rows


def overhead_ratio(measured: dict[str, Any], peer: str, ours: str) -> dict[str, Any]:
    """How many times the peer's overhead is ours, round by round (>1: we are cheaper)."""
    peer_m, ours_m = measured[peer], measured[ours]
    peer_over = paired(peer_m.ns, measured[peer_m.case.baseline].ns, lambda a, b: a - b)
    ours_over = paired(ours_m.ns, measured[ours_m.case.baseline].ns, lambda a, b: a - b)
    # A round where noise made our overhead <= 0 has no meaningful ratio: left out, counted.
    kept = [(p, o) for p, o in zip(peer_over.samples, ours_over.samples, strict=True) if o > 0]
    ratios = Series([p / o for p, o in kept])
    if not ratios.samples:
        ratios = Series([math.inf])
    return {
        "peer": peer,
        "ours": ours,
        "ratio": ratios.summary(),
        "rounds_left_out": len(peer_over.samples) - len(kept),
    }


def ratio_targets(measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ratio of `RATIO_TARGETS` whose two cases were measured, round by round."""
    found = []
    for label, numerator, denominator, goal, direction in RATIO_TARGETS:
        if numerator in measured and denominator in measured:
            found.append(
                {
                    **overhead_ratio(measured, numerator, denominator),
                    "label": label,
                    "target": goal,
                    "direction": direction,
                }
            )
    return found


def captured_event_cost(rows: list[Row], protocol: str) -> dict[str, Any] | None:
    """What one captured event adds to our overhead, in this thread's CPU µs, round
    by round (wall time on a shared machine moves by more than the difference):
    ours capturing over the bare app capturing, less ours over the bare app."""
    found = {row["key"]: row for row in rows}
    keys = [f"{protocol}.{k}" for k in ("ours_capture", "bare_capture", "ours_returning")]
    if not all(k in found for k in keys):
        return None
    capture, bare_capture, returning = (found[k]["cpu_ns"]["samples"] for k in keys)
    plain = found[found[keys[2]]["baseline"]]["cpu_ns"]["samples"]
    samples = [
        (c - b - (r - p)) / 1000
        for c, b, r, p in zip(capture, bare_capture, returning, plain, strict=True)
    ]
    return {"protocol": protocol, "us": Series(samples).summary()}


def throughput_rows(results: Iterable[Any]) -> list[Row]:
    return [
        {
            "label": r.label,
            "body_size": r.body_size,
            "chunk_size": r.chunk_size,
            "head": r.head,
            "ours_mbps": _scaled(r.ours, 1e-6),
            "naive_mbps": _scaled(r.naive, 1e-6),
        }
        for r in results
    ]


def memory_rows(results: Iterable[Any]) -> list[Row]:
    return [
        {
            "body_size": m.body_size,
            "chunk_size": m.chunk_size,
            "head": m.head,
            "ours_bytes": m.ours,
            "naive_bytes": m.naive,
            "bound_bytes": m.bound,
        }
        for m in results
    ]


def server_rows(results: Iterable[Any]) -> list[Row]:
    rows = []
    for r in results:
        rps, cpu = r.turns.rps, r.turns.cpu
        bare, floor, wrapped = rps["bare"], rps["floor"], rps["wrapped"]
        bare_cpu, floor_cpu, wrapped_cpu = cpu["bare"], cpu["floor"], cpu["wrapped"]
        client_cpu = r.turns.client_cpu
        rows.append(
            {
                "server": r.server,
                "config": r.config,
                "tool": r.tool,
                "bare_rps": bare.summary(),
                "wrapped_rps": wrapped.summary(),
                "ratio": paired(wrapped, bare, lambda a, b: a / b).summary(),
                "floor_rps": floor.summary(),
                "floor_ratio": paired(floor, bare, lambda a, b: a / b).summary(),
                "client_cpu": client_cpu.median if client_cpu.samples else None,
                "bare_cpu_us": _scaled(bare_cpu, 1e6) if bare_cpu.samples else None,
                "wrapped_cpu_us": _scaled(wrapped_cpu, 1e6) if wrapped_cpu.samples else None,
                "floor_cpu_us": _scaled(floor_cpu, 1e6) if floor_cpu.samples else None,
                "cpu_ratio": paired(bare_cpu, wrapped_cpu, lambda a, b: a / b).summary()
                if bare_cpu.samples and len(bare_cpu.samples) == len(wrapped_cpu.samples)
                else None,
            }
        )
    return rows


def api_row(result: Any) -> Row | None:
    """The JSON API case under uvicorn: each app's requests/s and server CPU per
    request, our and the peer's overhead over the bare app, and peer ÷ ours, per round."""
    bare, ours, peer = (result.turns.cpu[app] for app in ("json_bare", "json_ours", "json_peer"))
    if not bare.samples or not len(bare.samples) == len(ours.samples) == len(peer.samples):
        return None  # no /proc: throughput alone cannot tell two small overheads apart
    ours_overhead = paired(ours, bare, lambda a, b: a - b)
    peer_overhead = paired(peer, bare, lambda a, b: a - b)
    return {
        "config": result.config,
        "tool": result.tool,
        "rps": {app: series.summary() for app, series in result.turns.rps.items()},
        "cpu_us": {app: _scaled(series, 1e6) for app, series in result.turns.cpu.items()},
        "ours_overhead_us": _scaled(ours_overhead, 1e6),
        "peer_overhead_us": _scaled(peer_overhead, 1e6),
        "peer_over_ours": paired(peer_overhead, ours_overhead, lambda a, b: a / b).summary(),
    }


def _scaled(series: Series, factor: float) -> dict[str, Any]:
    return Series([x * factor for x in series.samples]).summary()


def targets(summary: dict[str, Any]) -> list[Row]:
    """The issue's targets, each with the measured value and PASS/MISS (never asserted)."""
    found: list[Row] = []

    def add(name: str, value: float, goal: str, ok: bool, shown: str) -> None:
        found.append({"target": name, "value": value, "goal": goal, "pass": ok, "shown": shown})

    rows = {r["key"]: r for r in summary.get("inprocess", [])}
    for protocol in ("asgi", "wsgi"):
        row, session = (
            rows.get(f"{protocol}.ours_returning"),
            rows.get(f"{protocol}.ours_in_session"),
        )
        if row and session:
            value = (session["overhead_ns"]["median"] - row["overhead_ns"]["median"]) / 1000
            add(
                f"{protocol.upper()} added by posthog-js's session cookie",
                value,
                f"≤ {SESSION_COST_US:g} µs",
                value <= SESSION_COST_US,
                f"{value:.1f} µs",
            )
    for comparison in summary.get("comparisons", []):
        goal = comparison.get("target")
        if goal is None:
            continue
        value = comparison["ratio"]["median"]
        at_most = comparison.get("direction") == "at_most"
        ok = value <= goal if at_most else value >= goal
        add(comparison["label"], value, f"{'≤' if at_most else '≥'} {goal:g}x", ok, f"{value:.2f}x")
    early = [r for r in summary.get("throughput", []) if r["head"]]
    if early:
        slowest = min(early, key=lambda r: r["ours_mbps"]["median"])
        value = slowest["ours_mbps"]["median"]
        add(
            "injection throughput (slowest body/chunk size)",
            value,
            f"≥ {TARGET_INJECTION_MBPS:g} MB/s",
            value >= TARGET_INJECTION_MBPS,
            f"{value:,.0f} MB/s ({slowest['label']})",
        )
    memory = summary.get("memory", [])
    if memory:
        over = [m for m in memory if m["ours_bytes"] > m["bound_bytes"]]
        groups: dict[tuple[int, bool], list[int]] = {}
        for m in memory:
            groups.setdefault((m["chunk_size"], m["head"]), []).append(m["ours_bytes"])
        growth = max(max(v) / min(v) for v in groups.values())
        shown = (
            f"growth {growth:.2f}x from smallest to largest body; "
            f"{len(over)} of {len(memory)} above the bound"
        )
        add(
            "injection peak memory flat and ≤ look-ahead + one chunk",
            growth,
            "flat (≤ 1.05x), every case ≤ bound",
            growth <= 1.05 and not over,
            shown,
        )
    for storm in summary.get("proxy_storm", []):
        if storm.get("floor"):
            continue
        name = f"proxy storm under {storm['server']}"
        if storm["server"] == "uvicorn":
            value = storm["rss_growth_mib"]
            goal = STORM_RSS_MIB
            add(
                f"{name}: peak RSS growth",
                value,
                f"≤ {goal} MiB",
                value <= goal,
                f"{value:.0f} MiB",
            )
        other = sum(storm["other"].values())
        add(f"{name}: answers other than 200/503", other, "0", other == 0, str(other))
        ratio = storm["latency_ratio"]
        if ratio is not None:
            goal_ratio = STORM_LATENCY_RATIO
            shown = f"{ratio:.1f}x"
            add(
                f"{name}: app p50 storm/idle",
                ratio,
                f"≤ {goal_ratio:g}x",
                ratio <= goal_ratio,
                shown,
            )
    api = summary.get("servers_api")
    if api:
        value = api["peer_over_ours"]["median"]
        add(
            "uvicorn, JSON API: PosthogASGIMiddleware ÷ ours, server CPU per request",
            value,
            "≥ 1x",
            value >= 1.0,
            f"{value:.2f}x",
        )
    for row in summary.get("servers", []):
        value = row["ratio"]["median"]
        goal = TARGET_SERVER_RATIOS.get(row["server"], 0.9)
        add(
            f"{row['server']} wrapped/bare throughput",
            value,
            f"≥ {goal:.2f}",
            value >= goal,
            f"{value:.2f}",
        )
    return found


# --------------------------------------------------------------------------- formatting


def _us(ns: float) -> str:
    us = ns / 1000
    return f"{us:.2f}" if abs(us) < 10 else f"{us:.1f}" if abs(us) < 100 else f"{us:.0f}"


def _spread_us(s: dict[str, Any]) -> str:
    return f"{_us(s['median'])} ({_us(s['q1'])}{DASH}{_us(s['q3'])})"


def _x(s: dict[str, Any], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f}x ({s['q1']:.{digits}f}{DASH}{s['q3']:.{digits}f})"


def _size(n: int) -> str:
    mib = 1024 * 1024
    if n >= mib:
        return f"{n / mib:.0f} MiB" if n % mib == 0 else f"{n / mib:.2f} MiB"
    return f"{n / 1024:.0f} KiB" if n % 1024 == 0 else f"{n / 1024:.1f} KiB"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def tables(summary: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every section present in the summary."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    rows = summary.get("inprocess", [])
    for protocol in ("asgi", "wsgi"):
        body = []
        for row in (r for r in rows if r["key"].startswith(protocol + ".")):
            overhead = row["overhead_ns"]
            body.append(
                [
                    row["label"],
                    _spread_us(row["ns"]),
                    _us(row["cpu_ns"]["median"]),
                    _spread_us(overhead) if overhead else "baseline",
                    _x(row["ratio"]) if row["ratio"] else "",
                    row["baseline"].split(".", 1)[1] if row["baseline"] else "",
                    f"{row['garbage_per_request']:.1f}",
                ]
            )
        if body:
            out.append(
                (
                    f"In-process {protocol.upper()}: µs per request, median (IQR)",
                    [
                        "case",
                        "µs/request",
                        "CPU µs",
                        "overhead µs",
                        "x baseline",
                        "baseline",
                        "cyclic garbage/req",
                    ],
                    body,
                )
            )
    comparisons = summary.get("comparisons", [])
    if comparisons:
        body = []
        for c in comparisons:
            goal = c.get("target")
            if goal:
                at_most = c.get("direction") == "at_most"
                median = c["ratio"]["median"]
                verdict = _verdict(median <= goal if at_most else median >= goal)
                shown = f"{'≤' if at_most else '≥'} {goal:g}x {verdict}"
            else:
                shown = "(no target)"
            body.append([c["label"], _x(c["ratio"], 2), shown])
        out.append(
            (
                "Overhead ratios in one run: median (IQR) of per-round ratios",
                ["ratio of overheads", "measured", "target"],
                body,
            )
        )
    costs = summary.get("captured_event", [])
    if costs:
        out.append(
            (
                "One captured event: what it adds to our overhead, CPU µs, median (IQR)",
                ["protocol", "CPU µs per captured event"],
                [
                    [
                        c["protocol"].upper(),
                        f"{c['us']['median']:.2f} ({c['us']['q1']:.2f}{DASH}{c['us']['q3']:.2f})",
                    ]
                    for c in costs
                ],
            )
        )
    throughput = summary.get("throughput", [])
    if throughput:
        body = []
        for r in throughput:
            placement = "early </head>" if r["head"] else "none (worst case)"
            ok = r["ours_mbps"]["median"] >= TARGET_INJECTION_MBPS
            body.append(
                [
                    _size(r["body_size"]),
                    _size(r["chunk_size"]),
                    placement,
                    _mbps(r["ours_mbps"]),
                    _mbps(r["naive_mbps"]),
                    f"{r['ours_mbps']['median'] / r['naive_mbps']['median']:.1f}x",
                    f"≥ {TARGET_INJECTION_MBPS:g} MB/s {_verdict(ok)}" if r["head"] else "",
                ]
            )
        out.append(
            (
                "Injection throughput, MB/s (10^6 bytes/s), median (IQR)",
                [
                    "body",
                    "chunks",
                    "insertion point",
                    "HtmlInjector",
                    "naive buffer",
                    "ours ÷ naive",
                    "target",
                ],
                body,
            )
        )
    memory = summary.get("memory", [])
    if memory:
        body = []
        for m in memory:
            body.append(
                [
                    _size(m["body_size"]),
                    _size(m["chunk_size"]),
                    "early </head>" if m["head"] else "none (worst case)",
                    _size(m["ours_bytes"]),
                    _size(m["naive_bytes"]) if m["naive_bytes"] is not None else "",
                    _size(m["bound_bytes"]),
                    _verdict(m["ours_bytes"] <= m["bound_bytes"]),
                ]
            )
        out.append(
            (
                "Injection peak memory (tracemalloc), beyond what was allocated before streaming",
                [
                    "body",
                    "chunks",
                    "insertion point",
                    "HtmlInjector",
                    "naive buffer",
                    "bound",
                    "≤ bound",
                ],
                body,
            )
        )
    proxy = summary.get("proxy")
    if proxy:
        out.append(
            (
                f"First-party proxy: one gzip event POST, ms ({proxy['requests']} each way, "
                "interleaved)",
                ["", "direct to PostHog (the sink)", "through /ingest", "added"],
                [
                    [
                        q,
                        f"{proxy['direct_ms'][q]:.2f}",
                        f"{proxy['proxied_ms'][q]:.2f}",
                        f"{proxy['added_ms'][q]:.2f}",
                    ]
                    for q in ("p50", "p95")
                ],
            )
        )
    storms = summary.get("proxy_storm", [])
    if storms:
        out.append(_storm_table(storms))
    servers = summary.get("servers", [])
    if servers:
        body = []
        for s in servers:
            goal = TARGET_SERVER_RATIOS.get(s["server"], 0.9)
            ok = s["ratio"]["median"] >= goal
            cpu = s["client_cpu"]
            server_cpu = "n/a"
            if s.get("cpu_ratio"):
                server_cpu = (
                    f"{s['bare_cpu_us']['median']:.0f} / {s['floor_cpu_us']['median']:.0f} / "
                    f"{s['wrapped_cpu_us']['median']:.0f} → {_ratio_range(s['cpu_ratio'])}"
                )
            body.append(
                [
                    f"{s['server']} ({s['config']})",
                    _rps(s["bare_rps"]),
                    f"{_rps(s['floor_rps'])} → {_ratio_range(s['floor_ratio'])}",
                    _rps(s["wrapped_rps"]),
                    _ratio_range(s["ratio"]),
                    server_cpu,
                    f"{cpu:.0%}" if cpu is not None and cpu == cpu else "n/a",
                    f"≥ {goal:.2f} {_verdict(ok)}",
                ]
            )
        out.append(
            (
                f"Real servers, 2 KiB HTML page, requests/s median (min{DASH}max); "
                "ratios per round; the floor: posthog's public context and one replace",
                [
                    "server",
                    "bare rps",
                    "floor rps → floor/bare",
                    "wrapped rps",
                    "wrapped/bare",
                    "server CPU µs/req bare / floor / wrapped → bare÷wrapped",
                    "load-gen CPU",
                    "target",
                ],
                body,
            )
        )
    api = summary.get("servers_api")
    if api:
        names = {
            "json_bare": "bare app",
            "json_ours": "ours",
            "json_peer": "posthog PosthogASGIMiddleware",
        }
        overheads = {"json_ours": api["ours_overhead_us"], "json_peer": api["peer_overhead_us"]}
        body = [
            [
                names[app],
                _rps(api["rps"][app]),
                _spread(api["cpu_us"][app], 0),
                _spread(overheads[app], 1) if app in overheads else "baseline",
            ]
            for app in names
        ]
        body.append(
            [
                "PosthogASGIMiddleware ÷ ours (overheads)",
                "",
                "",
                _ratio_range(api["peer_over_ours"]),
            ]
        )
        out.append(
            (
                f"Real server, a returning visitor's JSON call under uvicorn ({api['config']}): "
                f"requests/s and server CPU µs per request, median (min{DASH}max)",
                ["app", "requests/s", "server CPU µs/req", "overhead µs/req"],
                body,
            )
        )
    found = summary.get("targets", [])
    if found:
        out.append(
            (
                "Targets",
                ["target", "measured", "goal", "verdict"],
                [[t["target"], t["shown"], t["goal"], _verdict(t["pass"])] for t in found],
            )
        )
    return out


def _storm_table(storms: list[dict[str, Any]]) -> tuple[str, list[str], list[list[str]]]:
    first = storms[0]
    body = []
    for s in storms:
        other = ", ".join(f"{k}: {v}" for k, v in sorted(s["other"].items())) or "0"
        ratio = s["latency_ratio"]
        body.append(
            [
                f"{s['server']} ({s['config']})",
                f"{s['rss_base_mib']:.0f} → {s['rss_peak_mib']:.0f} (+{s['rss_growth_mib']:.0f})",
                f"{s['ok']} / {s['busy']} / {other}",
                f"{s['seconds']:.1f}",
                f"{s['idle_ms']['p50']:.1f} / {s['idle_ms']['p95']:.1f}",
                f"{s['storm_ms']['p50']:.1f} / {s['storm_ms']['p95']:.1f} ({s['storm_ms']['n']})",
                f"{ratio:.1f}x" if ratio is not None else "n/a",
            ]
        )
    title = (
        f"First-party proxy storm: {first['uploads']} concurrent uploads of "
        f"{first['size'] // 1024} KiB to /ingest/s/, app's /healthz probed idle and during"
    )
    header = [
        "server",
        "RSS MiB base → peak (growth)",
        "answers 200 / 503 / other",
        "storm s",
        "app ms idle p50 / p95",
        "app ms storm p50 / p95 (n)",
        "storm/idle p50",
    ]
    return title, header, body


def _mbps(s: dict[str, Any]) -> str:
    return f"{s['median']:,.0f} ({s['q1']:,.0f}{DASH}{s['q3']:,.0f})"


def _spread(s: dict[str, Any], digits: int) -> str:
    """Median (min to max) with `digits` decimals."""
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}{DASH}{s['max']:.{digits}f})"


def _ratio_range(s: dict[str, Any]) -> str:
    return _spread(s, 2)


def _rps(s: dict[str, Any]) -> str:
    return f"{s['median']:,.0f} ({s['min']:,.0f}{DASH}{s['max']:,.0f})"


def text(summary: dict[str, Any]) -> str:
    parts = []
    for title, header, body in tables(summary):
        widths = [max(len(str(c)) for c in column) for column in zip(header, *body, strict=True)]
        line = "  ".join("-" * w for w in widths)
        parts.append(title)
        parts.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        parts.append(line)
        parts.extend(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body
        )
        parts.append("")
    return "\n".join(parts)


def markdown(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    parts = [
        f"Run of {meta['date']} on {meta['machine']}"
        f" ({meta['cpus']} CPUs; load average {meta['load_before']} before, "
        f"{meta['load_after']} after), Python {meta['python']}, "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + f". {meta['method']}",
        "",
    ]
    for title, header, body in tables(summary):
        parts.append(f"**{title}**")
        parts.append("")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join("---" for _ in header) + "|")
        parts.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in body)
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("<", "&lt;") if value else " "


# --------------------------------------------------------------------------- the docs block


def replace_block(text: str, block: str) -> str:
    """Put `block` between the one START and the one END marker of `text`."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"expected exactly one {START} and one {END}")
    head, rest = text.split(START)
    middle, tail = rest.split(END) if END in rest else (None, None)
    if middle is None or tail is None:
        raise ValueError(f"{END} comes before {START}")
    return f"{head}{START}\n{block.strip()}\n{END}{tail}"


def check_replace_block(replace: Callable[[str, str], str] = replace_block) -> None:
    """A tiny self-check, run by every benchmark run before anything is measured."""
    page = f"# T\n\nbefore\n{START}\nold\n{END}\nafter\n"
    once = replace(page, "new table")
    assert once == f"# T\n\nbefore\n{START}\nnew table\n{END}\nafter\n", once
    assert replace(once, "new table") == once, "not idempotent"
    assert replace(once, "\n\nx\n\n") == f"# T\n\nbefore\n{START}\nx\n{END}\nafter\n"
    for broken in ("no markers", f"{END}\n{START}", f"{START}{START}{END}", f"{START} only"):
        try:
            replace(broken, "x")
        except ValueError:
            continue
        raise AssertionError(f"accepted broken markers: {broken!r}")
