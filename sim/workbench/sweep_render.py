"""Text tables for sweeps and goal seeks (the CLI's `--format table`)."""

from __future__ import annotations

from collections.abc import Sequence

from sim.workbench.goal_seek import GoalSeek
from sim.workbench.render import count, pct, score, usd
from sim.workbench.sweep import Sweep, SweepPoint, setting_columns
from sim.workbench.variants import format_value

FRONTIER_MARK = "*"


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> str:
    """Columns padded to their widest cell; the first `left` columns left-aligned, the rest right."""
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _rows(sweep: Sweep, points: Sequence[SweepPoint], mark: bool) -> tuple[list[str], list[list[str]]]:
    capped = any("cap" in point.summary for point in sweep.points)
    header = [
        *(["frontier"] if mark else []),
        *setting_columns(sweep),
        "cost/user-month",
        "p90",
        "p99",
        "cost/session",
        "quality",
        "cache hits",
        *(["users at cap", "denied", "degraded"] if capped else []),
    ]
    rows = []
    for point in points:
        figures = point.summary
        per_user = figures["cost_per_user_month_usd"]
        hits = figures["hit_rate"]["exact"] + figures["hit_rate"]["semantic"]
        cap = figures.get("cap", {})
        rows.append(
            [
                *([FRONTIER_MARK if point.on_frontier else ""] if mark else []),
                *(format_value(value) for _, value in point.settings),
                usd(per_user["mean"]),
                usd(per_user["p90"]),
                usd(per_user["p99"]),
                usd(figures["cost_per_session_usd"]),
                score(point.quality),
                pct(hits),
                *(
                    [
                        pct(cap.get("users_at_cap", 0.0)),
                        count(cap.get("requests_denied", 0)),
                        count(cap.get("requests_degraded", 0)),
                    ]
                    if capped
                    else []
                ),
            ]
        )
    return header, rows


def sweep_table(sweep: Sweep) -> str:
    """Every point, cheapest first; `*` marks the cost-quality frontier."""
    header, rows = _rows(sweep, sweep.points, mark=True)
    left = 1 + len(sweep.keys)
    title = (
        f"{sweep.scenario}: {len(sweep.points)} points, {sweep.mau:,} MAU, {sweep.days} days, "
        f"seed {sweep.seed}; "
        f"sorted by cost per user-month (mean); {FRONTIER_MARK} = on the cost-quality frontier"
    )
    return f"{title}{_basis_note(sweep)}\n{_grid(header, rows, left)}"


def _basis_note(sweep: Sweep) -> str:
    """The end of the title line when the per-user-month figures are not one complete month's: "; per-user
    figures: partial: 7 of 30 days (not scaled to the month)", or the mean of several months."""
    basis = sweep.points[0].summary.get("per_user_month", "1 complete month") if sweep.points else None
    if basis is None or basis == "1 complete month":
        return ""
    scaled = " (not scaled to the month)" if basis.startswith("partial") else ""
    return f"; per-user figures: {basis}{scaled}"


def goal_seek_table(sweep: Sweep, answer: GoalSeek) -> str:
    """The passing points, best quality first, under the one-line answer."""
    if not answer.passing:
        return f"{answer.message()}{_basis_note(sweep)}"
    header, rows = _rows(sweep, answer.passing, mark=True)
    return f"{answer.message()}{_basis_note(sweep)}\n{_grid(header, rows, 1 + len(sweep.keys))}"
