"""Figures as PNG files, drawn with matplotlib's object API on the Agg canvas (no display, no global
pyplot state, so figures can be drawn from any process or thread)."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sim.sweep import Sweep

FRONTIER_COLOUR = "#d62728"
OTHER_COLOUR = "#7f7f7f"


def save(figure: Figure, path: str | Path | None = None) -> bytes:
    """Render a figure to PNG bytes, and write them to `path` when given."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def frontier_figure(sweep: Sweep) -> Figure:
    """Cost per user-month against quality; the frontier points joined, highlighted and labelled."""
    figure = Figure(figsize=(9.0, 6.0))
    axes = figure.add_subplot()
    others = [p for p in sweep.points if not p.on_frontier]
    frontier = sorted(sweep.frontier, key=lambda p: p.cost)
    axes.scatter(
        [p.cost for p in others],
        [p.quality for p in others],
        s=36,
        color=OTHER_COLOUR,
        alpha=0.8,
        label="dominated configuration",
        zorder=2,
    )
    axes.plot(
        [p.cost for p in frontier],
        [p.quality for p in frontier],
        "-o",
        color=FRONTIER_COLOUR,
        markersize=8,
        linewidth=2,
        label="cost-quality frontier",
        zorder=3,
    )
    for point in sweep.points:
        axes.annotate(
            point.label,
            (point.cost, point.quality),
            xytext=(6, 4),
            textcoords="offset points",
            fontsize=7,
            color=FRONTIER_COLOUR if point.on_frontier else "#404040",
        )
    axes.set_xlabel("cost per user-month, mean (USD)")
    axes.set_ylabel("quality (eval score, 0-100)")
    axes.set_title(
        f"{sweep.scenario}: {len(sweep.points)} configurations at {sweep.mau:,} MAU (seed {sweep.seed})"
    )
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    axes.xaxis.set_major_formatter("${x:,.3f}")
    return figure
