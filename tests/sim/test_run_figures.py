"""The forecast figures folded chunk by chunk are the whole run's, exactly, however the run is cut."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.io.scenarios import load_scenario
from sim.io.value_spill import SpilledValues
from sim.model import engine
from sim.model.forecast import summarize
from sim.model.order_statistics import linear_percentiles, order_statistics, sort_keys
from sim.model.periods import SECONDS_PER_DAY
from sim.model.run import RunResult
from sim.model.run_figures import RequestChunk, RunFigures, ScoreSum, attempt_rows
from tests.sim.scenarios import scenario_from

# A cap (and its replay), chains and every cache, rate limits and retries, streaming; 30 and 45 days.
SCENARIOS = (
    ("scenarios/caps/naive-cap-block.toml", 45),
    ("scenarios/caps/optimized-cap-degrade.toml", 30),
    ("scenarios/seed-story/optimized.toml", 45),
    ("scenarios/launch-spike.toml", 30),
    ("scenarios/levers/streaming.toml", 30),
)
# A day of 30x traffic against 5 requests a minute: calls rate-limited, then queued by cost-aware retries.
RATE_LIMITED = {
    "traffic": {"bursts": [{"start_day": 3, "hours": 24, "factor": 30}]},
    "providers": {"gpt-4o": {"rpm": 5, "error_rate": 0.02}},
    "retry": {"policy": "cost-aware"},
}
MAU = 400


@functools.cache
def run_of(path: str, days: int) -> RunResult:
    scenario, catalog = load_scenario(path)
    return engine.simulate(scenario, catalog, MAU, days, seed=7)


@functools.cache
def rate_limited_run() -> RunResult:
    scenario, catalog = scenario_from(RATE_LIMITED)
    return engine.simulate(scenario, catalog, 200, 30, seed=3)


def folded(
    run: RunResult, request_groups: list[np.ndarray], attempt_cuts: list[int], replayed_parts: int = 1
) -> dict[str, object]:
    """The run's figures from its requests in `request_groups` and its attempt log cut at `attempt_cuts`."""
    figures = RunFigures.of_run(run)
    for rows in request_groups:
        figures.add_requests(RequestChunk.of_run(run, rows))
    bounds = [0, *attempt_cuts, len(run.attempts.column("outcome"))]
    for start, stop in itertools.pairwise(bounds):
        figures.add_attempts(attempt_rows(run, slice(start, stop)))
    if run.cap is not None:
        share, rest = divmod(run.cap.users_replayed, replayed_parts)
        for part in range(replayed_parts):
            figures.add_users_replayed(share + (rest if part == 0 else 0))
    return figures.summary()


def by_day(run: RunResult) -> list[np.ndarray]:
    """Each simulated day's requests (ascending request ids, as a day loop hands them over)."""
    day = (run.traffic.t // SECONDS_PER_DAY).astype(np.int64)
    return [np.flatnonzero(day == d) for d in np.unique(day)]


def ranges(count: int, cuts: list[int]) -> list[np.ndarray]:
    bounds = [0, *sorted(set(cuts)), count]
    return [np.arange(a, b) for a, b in itertools.pairwise(bounds)]


def runs() -> list[RunResult]:
    return [run_of(path, days) for path, days in SCENARIOS] + [rate_limited_run()]


def test_the_scenarios_exercise_what_the_fold_must_carry() -> None:
    every = runs()
    assert any(run.cap is not None and run.cap.users_replayed > 0 for run in every)
    assert any(summarize(run).get("extrapolation") is None and run.traffic.days == 45 for run in every)
    assert any(summarize(run)["rate_limited"] > 0 and summarize(run)["queued"] > 0 for run in every)
    assert any(summarize(run)["hit_rate"]["fragment"] > 0 for run in every)
    assert any(summarize(run)["stream_aborts"] > 0 for run in every)


@pytest.mark.parametrize("index", range(len(SCENARIOS) + 1))
def test_day_chunks_single_chunks_and_many_small_chunks_give_the_whole_summary(index: int) -> None:
    run = runs()[index]
    whole = summarize(run)
    requests, attempts = run.traffic.requests, len(run.attempts.column("outcome"))
    assert folded(run, [np.arange(requests)], []) == whole
    assert folded(run, by_day(run), [attempts // 3, attempts // 2], replayed_parts=3) == whole
    # Days handed over out of order, with attempts cut into many pieces: a fold does not care.
    assert folded(run, by_day(run)[::-1], list(range(0, attempts, 97))) == whole
    assert folded(run, ranges(requests, list(range(0, requests, 501))), [attempts]) == whole


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), index=st.integers(0, len(SCENARIOS)))
def test_random_request_ranges_and_attempt_rows_give_the_whole_summary(
    data: st.DataObject, index: int
) -> None:
    run = runs()[index]
    requests, attempts = run.traffic.requests, len(run.attempts.column("outcome"))
    request_cuts = data.draw(st.lists(st.integers(0, requests), max_size=12))
    attempt_cuts = sorted(data.draw(st.lists(st.integers(0, attempts), max_size=12)))
    groups = ranges(requests, request_cuts)
    order = data.draw(st.permutations(range(len(groups))))
    assert folded(run, [groups[i] for i in order], attempt_cuts) == summarize(run)


def test_a_fold_of_nothing_reports_zeros_not_an_error() -> None:
    run = run_of(*SCENARIOS[0])
    summary = RunFigures.of_run(run).summary()
    assert summary["requests"] == 0 and summary["ttft_ms"] == {"p50": 0.0, "p95": 0.0}
    assert summary["quality"] == 0.0 and summary["cap"]["quality_lost"] == 0.0


def test_a_capped_run_s_chunk_without_the_cap_s_effect_is_refused() -> None:
    run = run_of(*SCENARIOS[0])
    assert run.cap is not None
    chunk = RequestChunk.of_run(run, slice(0, 10))
    bare = RequestChunk(*(getattr(chunk, name) for name in RequestChunk.__slots__[:9]))
    with pytest.raises(ValueError, match="cap decision"):
        RunFigures.of_run(run).add_requests(bare)


finite = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True, width=64)
few = st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1.0, -1.0, 2.5, 1e308, -1e308])


def chunked(values: list[float], cuts: list[int]) -> list[np.ndarray]:
    array = np.array(values, dtype=np.float64)
    return [array[rows] for rows in ranges(len(values), [c % (len(values) + 1) for c in cuts])]


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.one_of(finite, few), min_size=1, max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=5),
    gather_limit=st.sampled_from([1, 2, 7, 1 << 22]),
    qs=st.lists(st.sampled_from([0, 1, 5, 25, 37.5, 50, 90, 95, 99, 99.9, 100]), min_size=1, max_size=3),
)
def test_percentiles_over_chunks_are_np_percentile_to_the_bit(
    values: list[float], cuts: list[int], gather_limit: int, qs: list[float]
) -> None:
    chunks = chunked(values, cuts)
    everything = np.array(values, dtype=np.float64)
    ranked = order_statistics(lambda: iter(chunks), len(values), range(len(values)), gather_limit)
    assert [ranked[i] for i in range(len(values))] == np.sort(everything).tolist()
    found = linear_percentiles(lambda: iter(chunks), len(values), qs)
    for q, value in zip(qs, found, strict=True):
        expected = float(np.percentile(everything, q))
        assert value == expected or (math.isnan(value) and math.isnan(expected)), (q, value, expected)


def test_every_rank_is_narrowed_in_the_same_passes_over_the_chunks() -> None:
    values = np.random.default_rng(3).lognormal(-0.5, 0.6, 60_000)  # TTFT-like: few leading bits differ
    chunks = np.array_split(values, 7)
    passes = [0]

    def read() -> Iterator[np.ndarray]:
        passes[0] += 1
        return iter(chunks)

    ranks = [0, 1, 600, 601, 30_000, 30_001, 54_000, 59_400, 59_401, 59_999]
    found = order_statistics(read, len(values), ranks, gather_limit=500)
    assert [found[rank] for rank in ranks] == np.sort(values)[ranks].tolist()
    # narrowed past the first 16 bits (a bucket of them holds thousands), all ten ranks in each pass and
    # gathered together: one search at a time read the chunks three times a rank
    assert 3 <= passes[0] <= 5


def test_percentiles_of_no_values_are_refused_and_keys_keep_the_order() -> None:
    with pytest.raises(ValueError, match="no values"):
        linear_percentiles(lambda: iter([]), 0, [50])
    ordered = np.array([-np.inf, -1e308, -1.0, -5e-324, -0.0, 0.0, 5e-324, 1.0, 1e308, np.inf])
    assert (np.diff(sort_keys(ordered).astype(object)) > 0).all()


@settings(max_examples=25, deadline=None)
@given(
    scores=st.lists(st.sampled_from([5.0, 40.0, 72.5, 88.0, 89.0, 94.0, 0.1]), max_size=80),
    cuts=st.lists(st.integers(0, 80), max_size=5),
)
def test_the_mean_score_is_the_exact_mean_rounded_once_whatever_the_chunks(
    scores: list[float], cuts: list[int]
) -> None:
    total = ScoreSum()
    for chunk in chunked(scores, cuts) if scores else []:
        total.add(chunk)
    exact = float(sum(map(Fraction, scores), Fraction(0)) / len(scores)) if scores else 0.0
    assert total.mean() == exact
    if scores:  # np.mean's pairwise sum may round differently: by an ulp or so at most
        assert math.isclose(total.mean(), float(np.mean(scores)), rel_tol=4e-16 * 8)


def test_ttfts_spilled_to_files_give_the_same_figures(tmp_path: Path) -> None:
    run = run_of(*SCENARIOS[2])
    store = SpilledValues(tmp_path / "ttft")
    figures = RunFigures.of_run(run, ttft_store=store)
    for rows in by_day(run):
        figures.add_requests(RequestChunk.of_run(run, rows))
    figures.add_attempts(attempt_rows(run))
    assert figures.summary() == summarize(run)
    assert len(list((tmp_path / "ttft").glob("values-*.npy"))) == len(by_day(run))
