"""The performance page's chart: each middleware's per-request overhead, from the results.

Drawn with matplotlib (a benchmark dependency only) as SVG, next to the page
the results block is written into; the same run's numbers as the tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHART = "performance-chart.svg"
#: In-process cases shown, in order: (key, label).
CASES = [
    ("posthog_floor", "floor: posthog's public context"),
    ("ours_returning", "ours, returning visitor"),
    ("posthog_asgi", "posthog PosthogASGIMiddleware"),
    ("starlette_session", "Starlette SessionMiddleware"),
    ("ours_capture", "ours, one event captured"),
    ("posthog_capture", "posthog PosthogASGIMiddleware, one event captured"),
    ("ours_in_session", "ours, with posthog-js's session cookie"),
    ("ours_first_visit", "ours, first visit"),
    ("ours_adopt", "ours, API call adopting posthog-js's id"),
    ("ours_html", "ours, 20 KB HTML injected"),
    ("flask_ours", "ours around a Flask app"),
    ("flask_session", "Flask's session read, same app"),
]
#: Bar colours by role: ours, the peers, the floor.
COLORS = {"ours": "#1d4aff", "peer": "#9aa5b1", "reference": "#f1a82c"}


def draw(summary: dict[str, Any], path: Path) -> Path | None:
    """Write the chart to `path`; None when the run measured nothing in process."""
    rows = {row["key"]: row for row in summary.get("inprocess", [])}
    bars: list[tuple[str, str, float, float, float]] = []
    for protocol in ("asgi", "wsgi"):
        for case, label in CASES:
            row = rows.get(f"{protocol}.{case}")
            if row and row["overhead_ns"]:
                spread = row["overhead_ns"]
                bars.append(
                    (
                        row["role"],
                        f"{protocol.upper()}: {label}",
                        spread["median"] / 1000,
                        spread["q1"] / 1000,
                        spread["q3"] / 1000,
                    )
                )
    if not bars:
        return None

    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "posthog-identity"  # stable ids between runs
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 0.38 * len(bars) + 1.2))
    positions = list(range(len(bars)))[::-1]
    colors = [COLORS.get(role, COLORS["peer"]) for role, *_ in bars]
    medians = [median for *_, median, _, _ in bars]
    errors = [
        [median - low for _, _, median, low, _ in bars],
        [high - median for _, _, median, _, high in bars],
    ]
    axes.barh(positions, medians, xerr=errors, color=colors, capsize=2)
    axes.set_yticks(positions, [label for _, label, *_ in bars], fontsize=8)
    axes.set_xlabel("overhead per request, µs (median, bars: interquartile range)")
    axes.set_title(
        f"Per-request overhead in process, run of {summary['meta']['date']} "
        "(blue: ours; grey: peers; orange: the floor)",
        fontsize=9,
    )
    for position, (*_, median, _, high) in zip(positions, bars, strict=True):
        axes.annotate(
            f"{median:.1f}",
            (high, position),
            xytext=(4, -3),
            textcoords="offset points",
            fontsize=7,
        )
    figure.tight_layout()
    figure.savefig(path, format="svg", metadata={"Date": None})
    pyplot.close(figure)
    return path
