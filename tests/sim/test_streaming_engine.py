"""The streaming engine (sim/io/streaming_run.py, sim/model/day_loop.py) gives the whole-run engine's
figures to the byte: `simulate_streaming(...) == forecast.summarize(engine.simulate(...))`, same seed.

The cases make the carried state matter: caches whose entries live across midnight, a conversation whose
sessions run past midnight and are summarized at a small window, prompt caches (with context and with a
per-user prefix), a burst against tight rate limits that queues and gives up across a midnight, a
45-day run (two periods), and user blocks of 97 users as well as one block.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sim.errors import InputError
from sim.io.scenarios import load_scenario
from sim.io.streaming_run import parts_of, simulate_streaming
from sim.model import engine, forecast
from sim.model.scenario import Burst, Scenario
from tests.sim.traffic_block_cases import at_a_small_limit

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
STARTERS = sorted(
    str(path.relative_to(SCENARIOS))
    for path in [
        *SCENARIOS.glob("*.toml"),
        *SCENARIOS.glob("levers/*.toml"),
        *SCENARIOS.glob("seed-story/*.toml"),
    ]
)


def whole_and_streamed(
    scenario: Scenario,
    catalog: Any,
    mau: int,
    days: int,
    users_per_block: int,
    tmp_path: Path,
    days_per_part: int | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole run's figures and the day engine's, playing `days_per_part` days at a time (None: as
    many as its budget of requests allows -- at these sizes, the whole month)."""
    whole = forecast.summarize(engine.simulate(scenario, catalog, mau, days, seed=7))
    streamed = simulate_streaming(
        scenario,
        catalog,
        mau,
        days,
        seed=7,
        spill_dir=tmp_path / "days",
        users_per_block=users_per_block,
        days_per_part=days_per_part,
    )
    return whole, streamed


# Half the starters a day at a time (as at millions of MAU), half a week at a time.
@pytest.mark.parametrize(
    ("name", "days_per_part"), [(name, 1 if i % 2 == 0 else 7) for i, name in enumerate(STARTERS)]
)
def test_every_starter_scenario_streams_to_the_whole_runs_figures(
    name: str, days_per_part: int, tmp_path: Path
) -> None:
    scenario, catalog = load_scenario(SCENARIOS / name)
    whole, streamed = whole_and_streamed(scenario, catalog, 300, 30, 97, tmp_path, days_per_part)
    assert whole["requests"] > 10_000 and whole["tokens"]["cached_input"] > 0  # prompt caches at work
    assert streamed == whole


@pytest.mark.parametrize("days_per_part", [1, 4, None])
def test_a_two_month_run_with_every_cache_layer_and_summaries_streams_exactly(
    days_per_part: int | None, tmp_path: Path
) -> None:
    scenario, catalog = load_scenario(SCENARIOS / "seed-story" / "optimized.toml")
    scenario = at_a_small_limit(scenario, "summarize")
    whole, streamed = whole_and_streamed(scenario, catalog, 400, 45, 1_000, tmp_path, days_per_part)
    assert len(whole["periods"]) == 2
    assert whole["hit_rate"]["exact"] > 0 and whole["hit_rate"]["semantic"] > 0
    assert whole["hit_rate"]["fragment"] > 0
    assert streamed == whole


@pytest.mark.parametrize("days_per_part", [1, 2])
def test_a_burst_against_tight_limits_queues_across_midnight_and_streams_exactly(
    days_per_part: int, tmp_path: Path
) -> None:
    scenario, catalog = load_scenario(SCENARIOS / "launch-spike-cost-aware.toml")
    traffic = msgspec.structs.replace(
        scenario.traffic, bursts=[Burst(start_day=0.9, hours=3, factor=20)]
    )  # 3 hours across the first midnight
    providers = {
        model: msgspec.structs.replace(scenario.provider(model), rpm=30, tpm=30_000)
        for model in scenario.models
    }
    scenario = msgspec.structs.replace(scenario, traffic=traffic, providers=providers)
    whole, streamed = whole_and_streamed(scenario, catalog, 400, 4, 97, tmp_path, days_per_part)
    assert whole["rate_limited"] > 0 and whole["queued"] > 0 and whole["fallbacks"] > 0
    assert streamed == whole


def test_a_per_user_prefix_without_context_streams_exactly(tmp_path: Path) -> None:
    scenario, catalog = load_scenario(SCENARIOS / "levers" / "router.toml")
    context = msgspec.structs.replace(scenario.prompts.context, system_tokens=0, history=False)
    prompts = msgspec.structs.replace(scenario.prompts, context=context, prefix_share=0.6)
    scenario = msgspec.structs.replace(scenario, prompts=prompts)
    assert not scenario.prompts.context.active
    whole, streamed = whole_and_streamed(scenario, catalog, 300, 10, 97, tmp_path, 3)
    assert whole["tokens"]["cached_input"] > 0
    assert streamed == whole


def test_days_per_part_keep_a_part_under_its_budget_of_requests() -> None:
    assert parts_of(3_000_000, 30, 4_000_000) == 31  # the whole month and the night after it
    assert parts_of(8_000_000, 30, 4_000_000) == 31  # at most twice the budget: one part, none ahead
    assert parts_of(8_000_001, 30, 4_000_000) == 14  # else two parts are held: each under the budget
    assert parts_of(40_000_000, 30, 4_000_000) == 2  # 1.33M a day
    assert parts_of(400_000_000, 30, 4_000_000) == 1  # a day over the budget is still played
    assert parts_of(0, 30, 4_000_000) == 31


def test_a_spill_directory_holding_an_earlier_spill_is_refused(tmp_path: Path) -> None:
    scenario, catalog = load_scenario(SCENARIOS / "levers" / "router.toml")
    simulate_streaming(scenario, catalog, 50, 2, seed=1, spill_dir=tmp_path / "days")
    with pytest.raises(InputError, match="already holds a spill"):
        simulate_streaming(scenario, catalog, 50, 2, seed=1, spill_dir=tmp_path / "days")


def margins(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim.cli", *args],
        cwd=SCENARIOS.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_compare_with_engine_days_prints_the_whole_engines_bytes(tmp_path: Path) -> None:
    files = [str(SCENARIOS / "seed-story" / name) for name in ("naive-mvp.toml", "optimized.toml")]
    common = ["compare", *files, "--mau", "400,900", "--days", "3", "--replications", "2", "--format", "json"]
    whole = margins(*common)
    by_day = margins(*common, "--engine", "days", "--spill", str(tmp_path))
    assert whole.returncode == 0 and by_day.returncode == 0, whole.stderr + by_day.stderr
    assert json.loads(whole.stdout)["scenarios"][1]["results"][1]["requests"] > 0
    assert by_day.stdout == whole.stdout
    assert list(tmp_path.iterdir()) == []  # each run's spill is removed after it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "levers/router.toml",
                "--engine",
                "days",
                "--out",
                "x.duckdb",
                "--executor",
                "dask://127.0.0.1:1",
            ],
            "--engine days --out writes its rows on this machine",
        ),
        (["levers/router.toml", "--spill", "somewhere"], "--spill is for --engine days"),
    ],
)
def test_engine_days_mistakes_are_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = margins("simulate", str(SCENARIOS / args[0]), "--mau", "50", "--days", "2", *args[1:])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr and "Traceback" not in result.stderr
