"""Blocks spilled by day to real files and read back one day at a time are the whole run's requests and
calls of that day, in global order, with their dtypes -- in both formats; with conversation context and
the engine's draws (engine_blocks), `traffic.generate`'s requests, calls, summary calls and conversation
of that day, and the engine's draws at that day's request ids."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest

from sim.errors import ArgumentError, InputError
from sim.io.scenarios import load_scenario
from sim.io.traffic_spill import (
    CALL_COLUMNS,
    FORMATS,
    REQUEST_COLUMNS,
    SpillFormat,
    hold,
    read_day,
    spill,
)
from sim.model.randomness import streams_for
from sim.model.scenario import Scenario
from sim.model.traffic import SECONDS_PER_DAY, Traffic, draw, generate
from sim.model.traffic_block_context import engine_blocks
from sim.model.traffic_blocks import blocks
from tests.sim.traffic_block_cases import at_a_small_limit, engine_uniforms

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
MAU, DAYS, SEED = 700, 45, 4


def expected_day(
    whole: Traffic, day: int, uniforms: dict[str, np.ndarray] | None = None, days: int = 1
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The whole-run arrays' requests of `day` (of the `days` days from it) with the engine's draws at
    their ids and their conversation, their calls, and their summary calls' ids and epochs."""
    request_day = (whole.t // SECONDS_PER_DAY).astype(np.int64)
    in_day = (request_day >= day) & (request_day < day + days)
    call_in_day = in_day[whole.call_request]
    requests = {"request": np.flatnonzero(in_day).astype(np.int64)}
    requests |= {column: getattr(whole, column)[in_day] for column in REQUEST_COLUMNS[1:]}
    requests |= {name: values[in_day] for name, values in (uniforms or {}).items()}
    calls = {"call": np.flatnonzero(call_in_day).astype(np.int64)}
    calls |= {column: getattr(whole, column)[call_in_day] for column in CALL_COLUMNS[1:]}
    conversation = whole.conversation
    if conversation is None:
        return requests, calls, {}
    requests |= {"history": conversation.history[in_day], "epoch": conversation.epoch[in_day]}
    turns = whole.call_request.size - conversation.summaries
    summary_in_day = call_in_day[turns:]
    summaries = {
        "call": np.flatnonzero(summary_in_day).astype(np.int64) + turns,
        "summary_epoch": conversation.summary_epoch[summary_in_day],
    }
    return requests, calls, summaries


def assert_columns_equal(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for column, values in expected.items():
        assert got[column].dtype == values.dtype, column
        assert np.array_equal(got[column], values), column


@pytest.mark.parametrize("days_per_part", [1, 4], ids=["by-day", "by-4-days"])
@pytest.mark.parametrize("users_per_block", [97, 10_000], ids=["blocks-of-97", "one-block-a-month"])
@pytest.mark.parametrize("spill_format", FORMATS)
def test_each_day_read_back_is_that_days_slice_of_the_whole_run(
    tmp_path: Path, spill_format: SpillFormat, users_per_block: int, days_per_part: int
) -> None:
    scenario, _ = load_scenario(SCENARIOS / "launch-spike.toml")  # a burst, chains, two months
    whole = draw(scenario, MAU, DAYS, streams_for(SEED, MAU, 0))
    summary = spill(
        blocks(scenario, MAU, DAYS, streams_for(SEED, MAU, 0), users_per_block),
        tmp_path,
        spill_format,
        days_per_part,
    )
    request_days = np.unique((whole.t // SECONDS_PER_DAY).astype(np.int64))
    assert summary.last_day == request_days[-1]
    assert summary.days == tuple(np.unique(request_days // days_per_part * days_per_part).tolist())
    assert summary.last_day >= DAYS, "a session that ends after the last day is in the spill too"
    assert (summary.requests, summary.calls) == (whole.requests, whole.call_request.size)
    assert summary.bytes == sum(path.stat().st_size for path in tmp_path.rglob("block-*"))
    for day in summary.days:
        got = read_day(tmp_path, day, spill_format)
        requests, calls, summaries = expected_day(whole, day, days=days_per_part)
        assert_columns_equal(got.requests, requests)
        assert_columns_equal(got.calls, calls)
        assert got.summaries == summaries == {}


CONTEXT_CASES = {
    "optimized, the whole history, every draw": lambda: load_scenario(
        SCENARIOS / "seed-story/optimized.toml"
    )[0],
    "optimized, summarized at 4k tokens": lambda: at_a_small_limit(
        load_scenario(SCENARIOS / "seed-story/optimized.toml")[0], "summarize"
    ),
    "semantic lever, two draws": lambda: load_scenario(SCENARIOS / "levers/semantic-cache.toml")[0],
}


@pytest.mark.parametrize("users_per_block", [97, 10_000], ids=["blocks-of-97", "one-block-a-month"])
@pytest.mark.parametrize("spill_format", FORMATS)
@pytest.mark.parametrize("case", list(CONTEXT_CASES))
def test_a_day_read_back_has_generates_calls_summaries_conversation_and_the_engines_draws(
    tmp_path: Path, case: str, spill_format: SpillFormat, users_per_block: int
) -> None:
    scenario: Scenario = CONTEXT_CASES[case]()
    whole = generate(scenario, MAU, DAYS, streams_for(SEED, MAU, 0))
    uniforms = engine_uniforms(scenario, MAU, SEED, whole.requests)
    summary = spill(
        engine_blocks(scenario, MAU, DAYS, streams_for(SEED, MAU, 0), users_per_block), tmp_path, spill_format
    )
    assert (summary.requests, summary.calls) == (whole.requests, whole.call_request.size)
    assert whole.conversation is not None
    summaries_read = 0
    for day in summary.days:
        got = read_day(tmp_path, day, spill_format)
        requests, calls, summaries = expected_day(whole, day, uniforms)
        assert_columns_equal(got.requests, requests)
        assert_columns_equal(got.calls, calls)
        assert_columns_equal(got.summaries, summaries)
        summaries_read += got.summaries["call"].size
    assert summaries_read == whole.conversation.summaries
    if "summarized" in case:
        assert summaries_read > 0


@pytest.mark.parametrize("days_per_part", [1, 4, DAYS + 1])
@pytest.mark.parametrize("users_per_block", [97, 10_000], ids=["blocks-of-97", "one-block-a-month"])
def test_traffic_held_in_memory_is_what_the_spill_reads_back(
    tmp_path: Path, users_per_block: int, days_per_part: int
) -> None:
    scenario = at_a_small_limit(load_scenario(SCENARIOS / "seed-story/optimized.toml")[0], "summarize")
    drawn = functools.partial(engine_blocks, scenario, MAU, DAYS, streams_for(SEED, MAU, 0), users_per_block)
    spilled = spill(drawn(), tmp_path, days_per_part=days_per_part)
    summary, held = hold(drawn(), days_per_part)
    assert summary == dataclasses.replace(spilled, bytes=0)
    assert sorted(held) == list(summary.days)
    summaries = 0
    for day in summary.days:
        read = read_day(tmp_path, day)
        assert held[day].day == read.day == day
        assert_columns_equal(held[day].requests, read.requests)
        assert_columns_equal(held[day].calls, read.calls)
        assert_columns_equal(held[day].summaries, read.summaries)
        summaries += read.summaries["call"].size if read.summaries else 0
    assert summaries > 0


def days_after_the_run(days: tuple[int, ...]) -> bool:
    return max(days) >= DAYS


def test_a_spill_into_a_used_directory_and_a_day_never_spilled_are_refused(tmp_path: Path) -> None:
    scenario, _ = load_scenario(SCENARIOS / "levers" / "router.toml")
    spill(blocks(scenario, 50, 2, streams_for(1, 50, 0), 20), tmp_path)
    with pytest.raises(InputError, match="already holds a spill"):
        spill(blocks(scenario, 50, 2, streams_for(1, 50, 0), 20), tmp_path)
    with pytest.raises(InputError, match="no spilled requests for day 9"):
        read_day(tmp_path, 9)
    with pytest.raises(ArgumentError, match="spill_format: one of npy, parquet, got 'csv'"):
        read_day(tmp_path, 0, "csv")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="days_per_part: at least 1, got 0"):
        spill(blocks(scenario, 50, 2, streams_for(1, 50, 0), 20), tmp_path / "parts", days_per_part=0)
