"""Figures as PNG files, drawn with matplotlib's object API on the Agg canvas (no display, no global
pyplot state, so figures can be drawn from any process or thread): saving, and the plain bar and line
charts that the workbench, the calibration and the notebooks share."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

POSITIVE_COLOUR = "#2ca02c"
NEGATIVE_COLOUR = "#d62728"


def save(figure: Figure, path: str | Path | None = None) -> bytes:
    """Render a figure to PNG bytes, and write them to `path` when given."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def bar_figure(labels: list[str], values: list[float], title: str, xlabel: str) -> Figure:
    """Horizontal bars, largest at the top, each with its value."""
    figure = Figure(figsize=(9.0, 0.6 * max(len(labels), 2) + 1.5))
    axes = figure.add_subplot()
    order = sorted(range(len(values)), key=lambda i: values[i])
    bars = axes.barh(
        [labels[i] for i in order],
        [values[i] for i in order],
        color=[POSITIVE_COLOUR if values[i] >= 0 else NEGATIVE_COLOUR for i in order],
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
