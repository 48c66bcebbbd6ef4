"""Figures as PNG files, drawn with matplotlib's object API on the Agg canvas (no display, no global
pyplot state, so figures can be drawn from any process or thread)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sim.semantic_calibration import ProfileRow
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


def bar_figure(labels: list[str], values: list[float], title: str, xlabel: str) -> Figure:
    """Horizontal bars, largest at the top, each with its value."""
    figure = Figure(figsize=(9.0, 0.6 * max(len(labels), 2) + 1.5))
    axes = figure.add_subplot()
    order = sorted(range(len(values)), key=lambda i: values[i])
    bars = axes.barh(
        [labels[i] for i in order],
        [values[i] for i in order],
        color=["#2ca02c" if values[i] >= 0 else FRONTIER_COLOUR for i in order],
        label="monthly USD",
    )
    axes.bar_label(bars, labels=[f"${values[i]:,.2f}" for i in order], padding=3, fontsize=8)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.axvline(0, color="#404040", linewidth=0.8)
    axes.grid(True, axis="x", alpha=0.3)
    axes.legend(loc="lower right")
    axes.margins(x=0.15)
    return figure


def xy_figure(x: list[float], series: dict[str, list[float]], xlabel: str, ylabel: str, title: str) -> Figure:
    """One line per series over a shared x axis (e.g. hit rate and false-hit rate by threshold)."""
    figure = Figure(figsize=(8.0, 4.5))
    axes = figure.add_subplot()
    for label, values in series.items():
        axes.plot(x, values, "-o", markersize=3, label=label)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    return figure


def semantic_profile_figure(rows: Sequence[ProfileRow], recommended: ProfileRow | None, title: str) -> Figure:
    """A semantic cache's true-hit and false-hit rates by threshold, with the recommended threshold."""
    thresholds = [r.threshold for r in rows]
    series = {
        "true hit (seen intent)": [r.true_hit for r in rows],
        "false hit (served a wrong answer)": [r.false_hit for r in rows],
    }
    if rows and rows[0].out_of_scope_lookups:
        series["out-of-scope queries that hit"] = [r.out_of_scope_hits / r.out_of_scope_lookups for r in rows]
    figure = xy_figure(thresholds, series, "similarity threshold (cosine)", "share of lookups", title)
    axes = figure.axes[0]
    axes.yaxis.set_major_formatter("{x:.0%}")
    if recommended is not None:
        axes.axvline(recommended.threshold, color="#404040", linestyle="--", label="recommended")
        axes.legend(loc="best")
    return figure
