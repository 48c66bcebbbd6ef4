"""The workbench's figures: the cost-quality frontier of a sweep and the distribution of cost per
user-month (plain charts and saving are in sim/io/figures.py)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from sim.workbench.sweep import Sweep

FRONTIER_COLOUR = "#d62728"
OTHER_COLOUR = "#7f7f7f"


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


def cost_distribution_figure(costs: np.ndarray, title: str, cap_usd: float | None = None) -> Figure:
    """Histogram of cost per user-month on log axes, so the few heavy users stay visible."""
    figure = Figure(figsize=(9.0, 5.0))
    axes = figure.add_subplot()
    positive = costs[costs > 0]
    if positive.size:
        low, high = float(positive.min()), float(positive.max())
        bins = np.geomspace(low, high * 1.0001, 50) if high > low else np.array([low * 0.9, low * 1.1])
        axes.hist(positive, bins=bins.tolist(), color="#1f77b4", alpha=0.85, label="users")
        axes.set_xscale("log")
        axes.set_yscale("log")
        for name, style in (("p50", ":"), ("p90", "--"), ("p99", "-.")):
            value = float(np.percentile(costs, int(name[1:])))
            axes.axvline(value, color="#404040", linestyle=style, label=f"{name} ${value:,.3f}")
    if cap_usd is not None:
        axes.axvline(cap_usd, color=FRONTIER_COLOUR, linewidth=2, label=f"cap ${cap_usd:,.2f}")
    free = int(np.count_nonzero(costs <= 0))
    if free:
        title += f" ({free:,} users cost nothing: served from caches)"
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("cost per user-month (USD, log scale)")
    axes.set_ylabel("users (log scale)")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="upper left")
    return figure
