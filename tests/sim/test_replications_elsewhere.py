"""`margins simulate` and `compare` with their (MAU level, replication) runs on a local process pool
(`--workers N`) or a real local Dask cluster (`--executor dask://...`): the same tables, JSON and DuckDB
rows to the byte as the runs one after another in this process; bad flags are one line."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from socket import gethostname
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from sim.cli import main
from sim.model.forecast import Replication, forecast, replicate
from sim.workbench import executor
from sim.workbench.executor import run_replications
from tests.budget.broker import free_port
from tests.sim.local_cluster import LocalCluster, tasks_run
from tests.sim.scenarios import ALL_LEVERS, scenario_from

ROOT = Path(__file__).resolve().parents[2]
NAIVE = str(ROOT / "scenarios/seed-story/naive-mvp.toml")
OPTIMIZED = str(ROOT / "scenarios/seed-story/optimized.toml")
# Two MAU levels (one given twice: each is its own level) and three replications: nine runs.
TINY = ["--mau", "150,200,150", "--days", "3", "--replications", "3"]
# Each table of an --out file, ordered so that rows compare; written_at is when, not what.
TABLES = {
    "usage": "SELECT * FROM usage ORDER BY ALL",
    "forecast_runs": "SELECT * EXCLUDE (written_at) FROM forecast_runs ORDER BY run_id",
    "forecast_tokens": "SELECT * FROM forecast_tokens ORDER BY ALL",
    "forecast_periods": "SELECT * FROM forecast_periods ORDER BY ALL",
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(workers=2) as running:
        yield running


def places(cluster: LocalCluster) -> dict[str, list[str]]:
    return {"here": [], "pool": ["--workers", "2"], "cluster": ["--executor", cluster.url]}


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_simulate_gives_the_same_bytes_here_on_a_pool_and_on_a_cluster(
    cluster: LocalCluster, fmt: str
) -> None:
    before = tasks_run(cluster)
    outputs = {
        place: invoke("simulate", OPTIMIZED, *TINY, "--format", fmt, *flags)
        for place, flags in places(cluster).items()
    }
    assert outputs["pool"] == outputs["here"]
    assert outputs["cluster"] == outputs["here"]
    assert "3 replication(s)" in outputs["here"] or '"replications": 3' in outputs["here"]
    assert tasks_run(cluster) - before == 9  # every run went to the cluster


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_compare_gives_the_same_bytes_here_on_a_pool_and_on_a_cluster(
    cluster: LocalCluster, fmt: str
) -> None:
    outputs = {
        place: invoke("compare", NAIVE, OPTIMIZED, *TINY, "--format", fmt, *flags)
        for place, flags in places(cluster).items()
    }
    assert outputs["pool"] == outputs["here"]
    assert outputs["cluster"] == outputs["here"]
    assert "naive" in outputs["here"] and "optimized" in outputs["here"]


def test_the_out_file_holds_the_same_rows_wherever_the_runs_ran(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    rows: dict[str, dict[str, list[tuple[object, ...]]]] = {}
    for place, flags in places(cluster).items():
        out = tmp_path / f"{place}.duckdb"
        invoke("compare", NAIVE, OPTIMIZED, *TINY, "--out", str(out), *flags)
        with duckdb.connect(str(out), read_only=True) as connection:
            rows[place] = {table: connection.execute(query).fetchall() for table, query in TABLES.items()}
    # scenarios x levels x replications; 150 MAU given twice is one run id, written twice
    assert len(rows["here"]["forecast_runs"]) == 2 * 2 * 3
    assert len(rows["here"]["usage"]) > 1000
    assert rows["pool"] == rows["here"]
    assert rows["cluster"] == rows["here"]


def test_runs_come_back_in_the_plans_order_and_only_summaries_unless_asked() -> None:
    scenario, catalog = scenario_from(ALL_LEVERS)
    plan = [Replication(mau, replication) for mau in (120, 80) for replication in range(2)]
    pooled = run_replications(scenario, catalog, 2, 7, plan, keep_runs=False, workers=2)
    assert all(run is None for _, run in pooled)
    here = [replicate(scenario, catalog, s.mau, 2, 7, s.replication, False)[0] for s in plan]
    assert [summary for summary, _ in pooled] == here
    kept = run_replications(scenario, catalog, 2, 7, plan[:1], keep_runs=True, workers=2)
    assert kept[0][1] is not None and kept[0][1].traffic.mau == 120


def test_on_run_sees_the_runs_in_the_serial_order_when_they_run_elsewhere() -> None:
    scenario, catalog = scenario_from(ALL_LEVERS)
    seen_here: list[tuple[int, int]] = []
    seen_pool: list[tuple[int, int]] = []

    def pool(plan: object, keep: bool) -> list[object]:
        assert keep
        return list(run_replications(scenario, catalog, 2, 3, plan, keep, workers=2))  # type: ignore[arg-type]

    here = forecast(scenario, catalog, [90, 60], 2, 3, 2, on_run=lambda r: seen_here.append(key(r)))
    there = forecast(
        scenario,
        catalog,
        [90, 60],
        2,
        3,
        2,
        on_run=lambda r: seen_pool.append(key(r)),
        execute=pool,  # type: ignore[arg-type]
    )
    assert seen_pool == seen_here == [(90, 0), (90, 1), (60, 0), (60, 1)]
    assert there == here


def key(run: object) -> tuple[int, int]:
    return run.traffic.mau, run.replication  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", [["simulate", OPTIMIZED], ["compare", NAIVE, OPTIMIZED]])
def test_workers_and_executor_exclude_each_other(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, *TINY, "--workers", "2", "--executor", "dask://127.0.0.1:1"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "margins: --workers and --executor exclude each other: the cluster's workers run the points\n"
    )


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--executor", "ray://127.0.0.1:10001"], "'ray://' is not a cluster this margins runs on"),
        (["--executor", "dask://host:99999"], "port 99999 is outside 1-65535"),
        (["--workers", "0"], "0 is not in the range 1<=x<=256"),
    ],
)
def test_a_bad_place_is_bad_input_naming_the_flag(flags: list[str], reason: str) -> None:
    result = CliRunner().invoke(main, ["simulate", OPTIMIZED, *TINY, *flags])
    assert result.exit_code == 2
    assert f"Invalid value for '{flags[0]}'" in result.stderr and reason in result.stderr


def test_an_unreachable_scheduler_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parse = executor.parse_cluster  # the refusal reads the same after 1 s as after the default 10 s
    monkeypatch.setattr(
        executor, "parse_cluster", lambda url: dataclasses.replace(parse(url), connect_timeout_s=1.0)
    )
    url = f"dask://127.0.0.1:{free_port()}"
    out = tmp_path / "never.duckdb"
    result = CliRunner().invoke(main, ["simulate", OPTIMIZED, *TINY, "--executor", url, "--out", str(out)])
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"margins: {url}: cannot reach the scheduler at tcp://127.0.0.1:")


@pytest.mark.parametrize(("out", "whole"), [(False, False), (True, True)])
def test_runs_come_back_whole_only_to_be_written(
    out: bool, whole: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[bool] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        asked.append(args[5])  # keep_runs
        return run_replications(*args, **kwargs)

    monkeypatch.setattr(executor, "run_replications", recording)
    file = ["--out", str(tmp_path / "f.duckdb")] if out else []
    invoke(
        "simulate", OPTIMIZED, "--mau", "100", "--days", "2", "--replications", "2", "--workers", "2", *file
    )
    assert asked == [whole]


# The day engine (--engine days) sends its runs to the same places: two levels, a few days, json.
DAYS_RUN = ["--mau", "300,700", "--days", "3", "--format", "json"]


def test_engine_days_on_a_pool_prints_the_whole_engines_bytes_and_leaves_spill_empty(tmp_path: Path) -> None:
    whole = invoke("simulate", OPTIMIZED, *DAYS_RUN)
    pooled = invoke(
        "simulate", OPTIMIZED, *DAYS_RUN, "--engine", "days", "--workers", "2", "--spill", str(tmp_path)
    )
    assert pooled == whole
    assert '"mau": 700' in whole
    assert list(tmp_path.iterdir()) == []  # each run's temporary directory is removed after it


@pytest.mark.parametrize("spill", [True, False])
def test_engine_days_on_a_cluster_prints_the_whole_engines_bytes(
    cluster: LocalCluster, tmp_path: Path, spill: bool
) -> None:
    whole = invoke("simulate", OPTIMIZED, *DAYS_RUN)
    where = ["--spill", str(tmp_path)] if spill else []  # else each worker's own temporary directory
    before = tasks_run(cluster)
    remote = invoke("simulate", OPTIMIZED, *DAYS_RUN, "--engine", "days", "--executor", cluster.url, *where)
    assert remote == whole
    assert tasks_run(cluster) - before == 2  # both runs went to the cluster
    assert list(tmp_path.iterdir()) == []


def test_a_spill_directory_a_worker_lacks_is_one_line_and_exit_1(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    missing = tmp_path / "not-on-the-workers"
    args = ["simulate", OPTIMIZED, "--mau", "50", "--days", "1", "--engine", "days", "--spill", str(missing)]
    result = CliRunner().invoke(main, [*args, "--executor", cluster.url])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    reason = f"--spill {missing} is not a directory on {gethostname()}"
    assert result.stderr == f"margins: {cluster.url}: {reason}\n"
    here = CliRunner().invoke(main, [*args, "--workers", "2"])  # this machine's is checked before any run
    assert here.exit_code == 2
    assert here.stderr == f"margins: --spill {missing}: no such directory\n"


def test_day_engine_runs_come_back_in_the_plans_order_wherever_they_ran(tmp_path: Path) -> None:
    scenario, catalog = scenario_from(ALL_LEVERS)
    plan = [Replication(mau, replication) for mau in (120, 80) for replication in range(2)]
    whole = [replicate(scenario, catalog, s.mau, 2, 7, s.replication, False)[0] for s in plan]
    for workers in (1, 2):
        noted = Notes()
        runs = run_replications(
            scenario, catalog, 2, 7, plan, False, workers, progress=noted, by_day=True, spill=tmp_path
        )
        assert [summary for summary, _ in runs] == whole
        assert all(run is None for _, run in runs)
        assert noted.advanced == len(plan)
        # here, each run's phases reach the bar; from a pool only each run's end does
        assert ("80 MAU, replication 2: days 1-2 of 2" in noted.notes) == (workers == 1)
    assert list(tmp_path.iterdir()) == []


class Notes:
    """A progress bar that remembers what it was told."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.advanced = 0

    def expect(self, total: int) -> None:
        pass

    def advance(self, units: int = 1) -> None:
        self.advanced += units

    def note(self, text: str) -> None:
        self.notes.append(text)

    def say(self, line: str) -> None:
        pass
