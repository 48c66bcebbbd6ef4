"""The unit-economics report: one self-contained HTML page (figures embedded as PNG data) a founder can
read in a minute -- the MAU table, where the money goes (by lever, by model), how cost per user-month is
spread (heavy users visible), what the cap does, and the change from a baseline scenario."""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.io.figures import bar_figure, save
from sim.io.progress import SILENT, Progress
from sim.io.scenarios import load_scenario
from sim.model.forecast import Forecast, Summary, flatten, forecast
from sim.model.run import RunResult
from sim.model.scenario import Scenario
from sim.workbench import plots, render
from sim.workbench.breakdown import (
    LeverEffect,
    cost_by_model,
    lever_effects,
    levers_used,
    top_share,
    user_month_costs,
)
from sim.workbench.executor import Cluster
from sim.workbench.quality_method import FORMULA, quality_sources

CAP_ROWS: tuple[render.Row, ...] = (
    ("cap per user-month", "cap.monthly_usd", render.usd),
    ("users over the soft limit", "cap.users_over_soft", render.pct),
    ("users who felt the cap (degraded or denied)", "cap.users_at_cap", render.pct),
    ("users whose month would pass the cap uncapped", "cap.users_over_cap_uncapped", render.pct),
    ("monthly spend saved", "cap.spend_saved_usd", render.usd),
    ("share of spend saved", "cap.spend_saved_share", render.pct),
    ("requests degraded", "cap.requests_degraded", render.count),
    ("requests denied", "cap.requests_denied", render.count),
    ("quality without the cap", "cap.quality_uncapped", render.score),
    ("quality lost (points)", "cap.quality_lost", render.score),
)


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything the page shows; `focus` is the MAU level of the breakdowns and the histogram."""

    scenario: Scenario
    forecast: Forecast
    focus: Summary
    user_costs: np.ndarray
    model_costs: dict[str, float]
    levers: list[LeverEffect]
    baseline: Forecast | None


def focus_level(levels: Sequence[int]) -> int:
    """The MAU level the breakdowns use: the one nearest 10,000 (on a log scale)."""
    return min(levels, key=lambda level: (abs(math.log(level / 10_000)), level))


def gather(
    path: str,
    baseline_path: str | None,
    maus: Sequence[int] | None,
    days: int | None,
    seed: int,
    workers: int | None = None,
    progress: Progress = SILENT,
    replications: int = 1,
    cluster: Cluster | None = None,
) -> ReportData:
    """Run the forecasts the page needs (raises SimError for a bad scenario). `progress` counts the runs
    -- the MAU table's, one per lever, the baseline's -- and notes the section and the run's phase. The MAU
    table runs `replications` times per level (two or more give its intervals); the breakdowns use the
    first replication at the focus level, the levers and the baseline one run each. The lever runs go to
    `cluster` when given, else to `workers` local processes; the MAU table and the baseline run here."""
    scenario, catalog = load_scenario(path)
    base = load_scenario(baseline_path) if baseline_path else None
    levels = list(maus or scenario.traffic.mau)
    days = days or scenario.traffic.days
    focus_mau = focus_level(levels)
    captured: list[RunResult] = []

    def keep_focus(run: RunResult) -> None:
        if run.traffic.mau == focus_mau and not captured:
            captured.append(run)
        progress.advance()

    table_runs = len(levels) * replications
    progress.expect(table_runs + len(levers_used(scenario)) + (len(levels) if base else 0))
    table = _Section(progress, "MAU table")
    result = forecast(
        scenario, catalog, levels, days, seed, replications, on_run=keep_focus, on_phase=table.note
    )
    run = captured[0]
    focus = result.results[levels.index(focus_mau)]
    levers = lever_effects(
        scenario, focus, focus_mau, days, seed, workers, _Section(progress, "levers"), cluster
    )
    baseline = None
    if base is not None:
        section = _Section(progress, f"baseline {base[0].name}")
        baseline = forecast(*base, levels, days, seed, on_run=section.run_done, on_phase=section.note)
    return ReportData(
        scenario=scenario,
        forecast=result,
        focus=focus,
        user_costs=user_month_costs(run),
        model_costs=cost_by_model(run),
        levers=levers,
        baseline=baseline,
    )


class _Section:
    """Progress of one section of the report: notes carry the section's name."""

    def __init__(self, progress: Progress, name: str) -> None:
        self._progress, self._name = progress, name

    def expect(self, total: int) -> None:
        pass  # the report's whole length is set once, in `gather`

    def advance(self, units: int = 1) -> None:
        self._progress.advance(units)

    def note(self, text: str) -> None:
        self._progress.note(f"{self._name}: {text}")

    def say(self, line: str) -> None:
        self._progress.say(line)

    def run_done(self, _run: RunResult) -> None:
        self._progress.advance()


def figures(data: ReportData) -> dict[str, bytes]:
    """The page's figures as PNG bytes, by short name."""
    mau = data.focus["mau"]
    cap = data.scenario.cap
    out = {
        "cost-per-user": save(
            plots.cost_distribution_figure(
                data.user_costs,
                f"{data.scenario.name}: cost per user-month at {mau:,} MAU; the top 1% of users make "
                f"{100 * top_share(data.user_costs):.0f}% of the spend",
                cap.monthly_usd if cap else None,
            )
        ),
        "models": save(
            bar_figure(
                list(data.model_costs),
                list(data.model_costs.values()),
                f"Monthly spend by model at {mau:,} MAU",
                "monthly spend (USD)",
            )
        ),
    }
    if data.levers:
        out["levers"] = save(
            bar_figure(
                [effect.lever for effect in data.levers],
                [effect.saved_usd for effect in data.levers],
                f"Monthly spend each lever saves at {mau:,} MAU (vs. the same scenario with it off)",
                "monthly spend saved (USD)",
            )
        )
    return out


def write_report(out: Path, data: ReportData) -> list[Path]:
    """Write the page and, beside it, its figures as PNG files; returns the paths written."""
    images = figures(data)
    written = []
    for name, png in images.items():
        image_path = out.with_name(f"{out.stem}-{name}.png")
        image_path.write_bytes(png)
        written.append(image_path)
    out.write_text(render_html(data, images), encoding="utf-8")
    return [out, *written]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(images: dict[str, bytes], name: str, alt: str) -> str:
    if name not in images:
        return ""
    data = base64.b64encode(images[name]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _figure_rows(results: Sequence[Summary], rows: Sequence[render.Row]) -> list[list[str]]:
    flat = [flatten(result) for result in results]
    return [[label, *(fmt(f[key]) for f in flat)] for label, key, fmt in rows if all(key in f for f in flat)]


def mau_table(result: Forecast) -> str:
    """Every figure of the forecast, one column per MAU level; with replications, each figure's two
    intervals and the line that names them."""
    rows = []
    for label, key, fmt in render.ROWS:
        cells = [render.figure_cell(r, key, fmt) for r in result.results]
        if all(text is not None for text in cells):
            rows.append([label, *(text or "" for text in cells)])
    for model in sorted({m for r in result.results for m in r["calls_by_model"]}):
        rows.append(
            [f"calls to {model}", *(render.count(r["calls_by_model"].get(model, 0)) for r in result.results)]
        )
    table = _table(["", *(f"{r['mau']:,} MAU" for r in result.results)], rows)
    legend = render.interval_legend(result.results)
    return f"<p class=meta>{html.escape(legend)}</p>{table}" if legend else table


def lever_table(data: ReportData) -> str:
    rows = [
        [
            effect.lever,
            render.usd(effect.without["cost_usd"]),
            render.usd(effect.with_lever["cost_usd"]),
            render.usd(effect.saved_usd),
            render.pct(effect.saved_share),
            f"{effect.quality_change:+.1f}",
        ]
        for effect in sorted(data.levers, key=lambda e: -e.saved_usd)
    ]
    header = ["lever", "monthly cost without it", "with it", "saved", "saved %", "quality change (pts)"]
    return _table(header, rows)


def model_table(data: ReportData) -> str:
    total = sum(data.model_costs.values())
    calls = data.focus["calls_by_model"]
    rows = [
        [
            model,
            render.count(calls.get(model, 0)),
            render.usd(cost),
            render.pct(cost / total if total else 0.0),
        ]
        for model, cost in sorted(data.model_costs.items(), key=lambda item: -item[1])
    ]
    return _table(["model", "calls", "monthly spend", "share"], rows)


def baseline_section(data: ReportData) -> str:
    if data.baseline is None:
        return ""
    parts = [f"<h2>Against the baseline: {html.escape(data.baseline.scenario)}</h2>"]
    for before, after in zip(data.baseline.results, data.forecast.results, strict=True):
        flat_before, flat_after = flatten(before), flatten(after)
        rows = [
            [
                label,
                fmt(flat_before[key]),
                fmt(flat_after[key]),
                render.change(flat_before[key], flat_after[key], fmt),
            ]
            for label, key, fmt in render.ROWS
            if key in flat_before and key in flat_after
        ]
        header = ["", data.baseline.scenario, data.forecast.scenario, "change"]
        parts.append(f"<h3>{after['mau']:,} MAU</h3>{_table(header, rows)}")
    parts.append(f"<p class=headline>{html.escape(render.headline_line(data.baseline, data.forecast))}</p>")
    return "".join(parts)


def prices_line(prices: dict[str, Any]) -> str:
    """Which prices the page's figures use: the catalog, its data's date, the day priced, overrides."""
    published = f", data published {prices['as_of']}" if prices.get("as_of") else ""
    catalog = prices.get("catalog", "unknown catalog")
    line = f"Prices: {catalog}{published}, as in force on {prices.get('priced_on')}"
    overridden = prices.get("overridden") or []
    if overridden:
        line += f"; the scenario's [prices] set {', '.join(overridden)}"
    return line + "."


def month_basis(result: Summary) -> str:
    """What the monthly figures are: "per-user-month figures: 1 complete month", and for a run shorter
    than a month "...: partial: 7 of 30 days; monthly totals extrapolated from 7 of 30 days (x4.29)"."""
    line = f"per-user-month figures: {result.get('per_user_month', '1 complete month')}"
    extrapolation = result.get("extrapolation")
    if extrapolation is None:
        return line
    return (
        f"{line}; monthly totals extrapolated from {extrapolation['basis']} (x{extrapolation['factor']:.2f})"
    )


def render_html(data: ReportData, images: dict[str, bytes]) -> str:
    """The whole page as one string: styles inline, figures as data URIs, nothing fetched."""
    scenario, focus = data.scenario, data.focus
    per_user = focus["cost_per_user_month_usd"]
    mau = focus["mau"]
    costs = data.user_costs
    headline = (
        f"At {mau:,} MAU: {render.usd(per_user['mean'])} per user-month on average "
        f"(p90 {render.usd(per_user['p90'])}, p99 {render.usd(per_user['p99'])}), "
        f"{render.usd(focus['cost_per_session_usd'])} per session, {render.usd(focus['cost_usd'])} a month, "
        f"quality {render.score(focus['quality'])} / 100."
    )
    sections = [
        f"<h1>Unit economics: {html.escape(scenario.name)}</h1>",
        f"<p>{html.escape(scenario.description)}</p>" if scenario.description else "",
        f"<p class=meta>Seed {data.forecast.seed}, {data.forecast.days} simulated days "
        f"({html.escape(month_basis(focus))}), written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by "
        "margins report.</p>",
        f"<p class=meta>{html.escape(prices_line(data.forecast.prices))}</p>",
        f"<p class=headline>{html.escape(headline)}</p>",
        "<h2>At each MAU level</h2>",
        "<p>Each level is simulated on its own: global caches hit more with more users.</p>",
        mau_table(data.forecast),
        f"<h2>Where the money goes at {mau:,} MAU</h2>",
        "<h3>By lever</h3>",
        (
            "<p>Each lever against the same scenario with only that lever off, on the same traffic.</p>"
            + lever_table(data)
            + _image(images, "levers", "monthly spend saved by each lever")
            if data.levers
            else "<p>This scenario uses no cost lever.</p>"
        ),
        "<h3>By model</h3>",
        model_table(data),
        _image(images, "models", "monthly spend by model"),
        f"<h2>Cost per user-month at {mau:,} MAU</h2>",
        f"<p>Heavy users: the top 1% make {100 * top_share(costs):.0f}% of the spend, the top 10% "
        f"{100 * top_share(costs, 0.10):.0f}%; the costliest user runs "
        f"{render.usd(float(costs.max(initial=0)))} a month.</p>",
        _image(images, "cost-per-user", "histogram of cost per user-month, log scales"),
    ]
    if scenario.cap is not None:
        sections += [
            "<h2>The cap</h2>",
            f"<p>{render.usd(scenario.cap.monthly_usd)} per user-month, action {scenario.cap.action}"
            + (f" to {html.escape(scenario.cap.degrade_model)}" if scenario.cap.degrade_model else "")
            + ", applied with the enforcer's ledger: each request reserves its worst case first.</p>",
            _table(
                ["", *(f"{r['mau']:,} MAU" for r in data.forecast.results)],
                _figure_rows(data.forecast.results, CAP_ROWS),
            ),
        ]
    sections.append(baseline_section(data))
    sections += [
        "<h2>How quality is scored</h2>",
        f"<p>{html.escape(FORMULA)}</p>",
        _table(["input", "value", "where it comes from"], quality_sources(scenario)),
    ]
    body = "\n".join(section for section in sections if section)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>margins report: {html.escape(scenario.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }} .meta {{ color: #666; }} .headline {{ font-size: 1.1em; font-weight: 600; }}
</style></head><body>
{body}
</body></html>
"""
