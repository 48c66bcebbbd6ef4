"""Goal seek: the configurations under a p90 limit (and above a quality floor), best quality first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from sim.cli import main
from sim.workbench.goal_seek import goal_seek
from sim.workbench.sweep import Sweep, SweepPoint

ROOT = Path(__file__).resolve().parents[2]
NAIVE = str(ROOT / "scenarios/seed-story/naive-mvp.toml")
SMALL = ["--mau", "200", "--days", "3", "--no-progress", "--workers", "1"]


def point(label: str, mean: float, p90: float, quality: float) -> SweepPoint:
    summary: dict[str, Any] = {"cost_per_user_month_usd": {"mean": mean, "p90": p90}, "quality": quality}
    return SweepPoint((("k", label),), f"k={label}", summary, on_frontier=False)


# A known answer: limit $0.50 at p90, quality >= 85 -> b (quality 91) then c (88); a is too dear at p90,
# d is cheap but scores too low.
SWEEP = Sweep(
    "known",
    1,
    100,
    3,
    ("k",),
    [
        point("d", 0.05, 0.10, 80.0),
        point("c", 0.10, 0.30, 88.0),
        point("b", 0.20, 0.50, 91.0),
        point("a", 0.25, 0.80, 95.0),
    ],
)


def test_known_answer_best_quality_first() -> None:
    answer = goal_seek(SWEEP, 0.50, 85.0)
    assert [p.label for p in answer.passing] == ["k=b", "k=c"]
    assert answer.message().startswith("2 configuration(s) meet p90 cost per user-month <= $0.5000")


def test_without_a_quality_floor_every_point_under_the_limit_passes() -> None:
    answer = goal_seek(SWEEP, 0.50)
    assert [p.label for p in answer.passing] == ["k=b", "k=c", "k=d"]


def test_nothing_under_the_limit_names_the_cheapest_point() -> None:
    answer = goal_seek(SWEEP, 0.05)
    assert not answer.found
    assert answer.message() == (
        "No configuration meets p90 cost per user-month <= $0.0500. "
        "The cheapest point is k=d: p90 $0.1000 per user-month at quality 80.0."
    )


def test_under_the_limit_but_below_the_floor_says_the_best_quality_reached() -> None:
    answer = goal_seek(SWEEP, 0.30, 90.0)
    assert not answer.found
    assert "Under the cost limit the best quality is 88.0 (k=c, p90 $0.3000)" in answer.message()


def test_goal_seek_command_finds_the_cheap_model_only() -> None:
    # gpt-4o-mini costs about 1/16 of gpt-4o per token: at a limit between the two, only it passes.
    args = ["goal-seek", NAIVE, "--vary", "router.model=gpt-4o,gpt-4o-mini", *SMALL, "--format", "json"]
    probe = json.loads(CliRunner().invoke(main, [*args, "--max-per-user-month", "1000"]).output)
    p90 = {p["settings"]["router.model"]: p["cost_per_user_month_usd"]["p90"] for p in probe["passing"]}
    assert p90["gpt-4o-mini"] < p90["gpt-4o"]
    limit = (p90["gpt-4o-mini"] + p90["gpt-4o"]) / 2
    answer = json.loads(CliRunner().invoke(main, [*args, "--max-per-user-month", str(limit)]).output)
    assert answer["found"] and [p["settings"] for p in answer["passing"]] == [{"router.model": "gpt-4o-mini"}]


def test_goal_seek_command_says_plainly_when_nothing_fits_and_exits_0() -> None:
    args = ["goal-seek", NAIVE, "--vary", "router.model=gpt-4o,gpt-4o-mini", *SMALL]
    result = CliRunner().invoke(main, [*args, "--max-per-user-month", "0.0001"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("No configuration meets p90 cost per user-month <= $0.0001.")
    assert "The cheapest point is model=gpt-4o-mini" in result.output


def test_goal_seek_bad_input_exits_2() -> None:
    result = CliRunner().invoke(main, ["goal-seek", NAIVE, "--vary", "router.modle=gpt-4o", *SMALL])
    assert result.exit_code == 2  # the limit is missing: click's usage error
    result = CliRunner().invoke(
        main, ["goal-seek", NAIVE, "--max-per-user-month", "1", "--vary", "router.modle=x", *SMALL]
    )
    assert result.exit_code == 2 and "router.modle: unknown key (did you mean 'model'?)" in result.output
