"""The semantic-cache calibration's figure: true- and false-hit rates by threshold."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from sim.calibration.semantic import ProfileRow
from sim.io.figures import xy_figure


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
