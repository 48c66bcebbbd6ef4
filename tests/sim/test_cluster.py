"""Sweeps on a Dask cluster (`--executor dask://...`): a real local cluster of separate processes gives
the local pool's table byte for byte; a cluster that cannot be reached, or runs other margins, or loses a
worker, is one line and exit 1 -- or a whole table, never part of one."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sim import workbench
from sim.cli import extras, main, placement
from sim.errors import ArgumentError, ClusterError
from sim.workbench import dask_cluster, executor
from sim.workbench.executor import parse_cluster, run_points
from sim.workbench.report import gather
from sim.workbench.variants import grid, parse_vary
from tests.budget.broker import free_port
from tests.sim.local_cluster import LocalCluster, pid_of, tasks_run, wait_until_busy
from tests.sim.scenarios import ALL_LEVERS, scenario_from

ROOT = Path(__file__).resolve().parents[2]
OPTIMIZED = str(ROOT / "scenarios/seed-story/optimized.toml")
GRID = ["--vary", "cache.semantic.threshold=0.8,0.95", "--vary", "router.cheap_share=0.6,0.75"]
SMALL = ["--mau", "200", "--days", "3", "--no-progress"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(workers=2) as running:
        yield running


def margins(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sim.cli", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("command", ["sweep", "goal-seek"])
def test_the_cluster_gives_the_local_pools_table_byte_for_byte(cluster: LocalCluster, command: str) -> None:
    limit = ["--max-per-user-month", "1.0"] if command == "goal-seek" else []
    local = CliRunner().invoke(main, [command, OPTIMIZED, *limit, *GRID, *SMALL, "--workers", "2"])
    remote = CliRunner().invoke(main, [command, OPTIMIZED, *limit, *GRID, *SMALL, "--executor", cluster.url])
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    assert remote.stdout == local.stdout
    assert len(local.stdout.splitlines()) >= 6  # a title, a header, four points


def test_the_reports_lever_runs_on_the_cluster_match_the_local_ones(cluster: LocalCluster) -> None:
    here = gather(OPTIMIZED, None, [200], 2, 5, workers=1)
    there = gather(OPTIMIZED, None, [200], 2, 5, cluster=parse_cluster(cluster.url))
    assert len(here.levers) >= 3
    assert [(e.lever, e.without) for e in there.levers] == [(e.lever, e.without) for e in here.levers]


def test_the_report_command_sends_its_lever_runs_to_the_cluster(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    args = ["report", OPTIMIZED, "--mau", "200", "--days", "2", "--out", str(out), "--executor", cluster.url]
    before = tasks_run(cluster)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000
    assert tasks_run(cluster) - before >= 3  # one task per lever it turns off
    both = CliRunner().invoke(main, [*args, "--workers", "1"])
    assert both.exit_code == 2 and "--workers and --executor exclude each other" in both.output


def test_an_unreachable_cluster_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    parse = executor.parse_cluster  # the refusal reads the same after 1 s as after the default 10 s
    monkeypatch.setattr(
        executor, "parse_cluster", lambda url: dataclasses.replace(parse(url), connect_timeout_s=1.0)
    )
    url = f"dask://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["sweep", OPTIMIZED, *GRID, *SMALL, "--executor", url])
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"margins: {url}: cannot reach the scheduler at tcp://127.0.0.1:")


def test_workers_with_another_margins_are_named(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = importlib.metadata.version("margins")
    monkeypatch.setattr(dask_cluster, "_version", lambda: "0.0.1")  # as if this side were another release
    result = CliRunner().invoke(main, ["sweep", OPTIMIZED, *GRID, *SMALL, "--executor", cluster.url])
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert f"margins: {cluster.url}: the scheduler and 2 of 2 worker(s) cannot run these points: " in line
    assert line.count(f"has margins {installed}, this is 0.0.1") == 3


def test_what_a_worker_lacks_is_named() -> None:
    expected = "margins 0.1.0 (code abc), numpy 2.4.6"
    found = dask_cluster.mismatches(
        "0.1.0",
        expected,
        {
            "tcp://a:1": importlib.metadata.PackageNotFoundError("margins"),
            "tcp://b:1": "0.0.9",
            "tcp://c:1": "0.1.0",
            "tcp://d:1": "0.1.0",
            "tcp://e:1": "0.1.0",
        },
        {
            "tcp://c:1": "margins 0.1.0 (code def), numpy 2.4.6",
            "tcp://d:1": expected,
            "tcp://e:1": ImportError("cannot import name 'X'"),
        },
    )
    assert found == [
        "tcp://a:1 has no margins installed",
        "tcp://b:1 has margins 0.0.9, this is 0.1.0",
        f"tcp://c:1 runs margins 0.1.0 (code def), numpy 2.4.6, this runs {expected}",
        "tcp://e:1 cannot load margins (ImportError: cannot import name 'X')",
    ]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (
            "ray://127.0.0.1:10001",
            "'ray://' is not a cluster this margins runs on; expected dask://HOST:PORT",
        ),
        ("dask://", "'dask://' is not dask://HOST:PORT"),
        ("dask://host:99999", "port 99999 is outside 1-65535"),
        ("127.0.0.1:8786", "is not a cluster this margins runs on"),
    ],
)
def test_a_bad_url_is_bad_input(url: str, reason: str) -> None:
    with pytest.raises(ArgumentError, match="--executor") as caught:
        parse_cluster(url)
    assert reason in caught.value.reason
    result = CliRunner().invoke(main, ["sweep", OPTIMIZED, *GRID, *SMALL, "--executor", url])
    assert result.exit_code == 2 and reason in result.output


def test_the_port_defaults_to_dasks() -> None:
    assert parse_cluster("dask://10.0.0.5").address == "tcp://10.0.0.5:8786"
    assert parse_cluster("dask://[::1]:9000/").address == "tcp://[::1]:9000"


def test_workers_and_executor_exclude_each_other() -> None:
    args = ["sweep", OPTIMIZED, *GRID, *SMALL, "--workers", "2", "--executor", "dask://127.0.0.1:1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--workers and --executor exclude each other" in result.output


def test_a_worker_killed_mid_sweep_gives_the_whole_table_or_one_line() -> None:
    args = ["sweep", OPTIMIZED, *GRID, "--mau", "3000", "--days", "10", "--no-progress"]
    local = margins(*args, "--workers", "1")
    assert local.returncode == 0, local.stderr
    with LocalCluster(workers=2) as doomed:
        command = [sys.executable, "-m", "sim.cli", *args, "--executor", doomed.url]
        sweep = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.kill(pid_of(doomed, wait_until_busy(doomed)), signal.SIGKILL)
        out, err = sweep.communicate(timeout=300)
    if sweep.returncode == 0:  # Dask reschedules the point on the worker left
        assert out == local.stdout
    else:
        assert sweep.returncode == 1 and out == ""
        (line,) = err.strip().splitlines()
        assert line.startswith(f"margins: {doomed.url}: ")


def test_a_cluster_left_without_workers_stops_the_sweep_with_one_error() -> None:
    base, _ = scenario_from(ALL_LEVERS)
    variants = grid(base, [parse_vary("cache.semantic.threshold=0.8,0.85,0.9,0.95")], "t.toml")
    with LocalCluster(workers=1) as lonely:
        cluster = dataclasses.replace(parse_cluster(lonely.url), no_workers_grace_s=2.0)
        killer = threading.Thread(
            target=lambda: os.kill(pid_of(lonely, wait_until_busy(lonely)), signal.SIGKILL)
        )
        killer.start()
        with pytest.raises(ClusterError) as caught:
            run_points(variants, 3000, 10, 1, cluster=cluster)
        killer.join()
    assert str(caught.value) == f"{lonely.url}: no workers left for 2 s; the sweep stopped"


def test_without_the_cluster_extra_the_message_says_which_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = extras.extra_installed
    monkeypatch.setattr(placement, "extra_installed", lambda extra: extra != "cluster" and installed(extra))
    args = ["sweep", OPTIMIZED, *GRID, *SMALL, "--executor", "dask://127.0.0.1:8786"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert (
        result.stderr == "margins sweep --executor needs the cluster extra: pip install 'margins[cluster]'\n"
    )


def test_without_distributed_the_api_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if distributed were missing: the module that imports it cannot be imported.
    monkeypatch.setitem(sys.modules, "sim.workbench.dask_cluster", None)
    monkeypatch.delattr(workbench, "dask_cluster")
    base, _ = scenario_from(ALL_LEVERS)
    (variant,) = grid(base, [parse_vary("cache.semantic.threshold=0.8")], "t.toml")
    with pytest.raises(ClusterError, match=r"needs the cluster extra \(pip install 'margins\[cluster\]'\)"):
        run_points([variant], 200, 1, 1, cluster=parse_cluster("dask://127.0.0.1:8786"))
