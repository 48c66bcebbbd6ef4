"""`margins store check | backup | repair` on a partitioned root (`ROOT/partition=<p>/`, one event store per
partition): each partition's store as the plain command treats it, prefixed by its name, and one line for
a root that is not what it should be."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner, Result

from budget.cli.spend import spend
from budget.cli.store import store_group
from budget.domain.events import Event
from budget.store.event_store import EventStore
from budget.store.manifest import read_manifest
from tests.budget.store_helpers import file_states, replayed, usage_events, write_store


def run(*args: str) -> Result:
    return CliRunner().invoke(store_group, list(args))


def partition_events(partition: int, count: int, start: int) -> list[Event]:
    """Usage of a partition's own users (`p<partition>-u<i>`): every user lives in one partition."""
    events = usage_events(count, start=start)
    return [msgspec.structs.replace(e, user_id=f"p{partition}-{e.user_id}") for e in events]


def write_partition(root: Path, partition: int, flushes: list[int]) -> None:
    """A partition's store, one flush per entry of `flushes` (its number of events)."""
    with EventStore.open(root / f"partition={partition}", flush_interval=None, offload=False) as store:
        start = 0
        for count in flushes:
            store.append(partition_events(partition, count, start))
            store.flush()
            start += count


def partitioned_root(tmp_path: Path) -> Path:
    """partition=0 and partition=2 hold events; partition=1 only the LOCK of an enforcer that just took
    it."""
    root = tmp_path / "root"
    write_partition(root, 0, [10, 12])
    (root / "partition=1").mkdir()
    (root / "partition=1" / "LOCK").touch()
    write_partition(root, 2, [8, 9, 7])
    return root


def spend_json(store: Path, month: str) -> Any:
    args = ["--store", str(store), "--format", "json", "--month", month, "--top", "100"]
    result = CliRunner().invoke(spend, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))


def test_check_prints_each_partitions_lines_in_order_then_ok(tmp_path: Path) -> None:
    root = partitioned_root(tmp_path)
    result = run("check", str(root))
    assert result.exit_code == 0, result.output
    expected = []
    for p in (0, 1, 2):
        if p == 1:
            expected.append("partition=1: no events yet")
            continue
        plain = run("check", str(root / f"partition={p}"))  # the reference: the plain check of the store
        assert plain.exit_code == 0, plain.output
        expected += [f"partition={p}: {line}" for line in plain.stdout.splitlines()[:-1]]  # but its "ok"
    assert result.stdout.splitlines() == [*expected, "ok"]
    assert result.stderr == ""


def test_a_damaged_segment_in_one_partition_is_named_by_its_path_and_exit_2(tmp_path: Path) -> None:
    root = partitioned_root(tmp_path)
    victim = root / "partition=2" / read_manifest(root / "partition=2").usage[1].file
    damage(victim)
    result = run("check", str(root))
    assert result.exit_code == 2
    problems = result.stderr.strip().splitlines()
    assert problems, result.output
    assert all(line.startswith(f"margins store check: {root / 'partition=2'}: ") for line in problems)
    assert any(victim.name in line and "sha256" in line for line in problems)
    assert "partition=0: manifest.json: version 2" in result.stdout  # the others were still checked
    assert result.stdout.splitlines()[-1] == (
        f"{len(problems)} problems; `margins store repair {root}` rebuilds it from the journal and the log"
    )


def test_a_backup_is_one_store_per_partition_and_spend_over_it_is_the_same(tmp_path: Path) -> None:
    root, dest = partitioned_root(tmp_path), tmp_path / "backup"
    with EventStore.open(root / "partition=0", flush_interval=None, offload=False) as store:
        store.append(partition_events(0, 5, start=22))  # in the log only, its enforcer running
        result = run("backup", str(root), str(dest))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"backed up 51 events in 3 partitions from {root} to {dest}"
    assert "partition=0: log: 5 lines after seq 21" in result.stdout
    assert sorted(p.name for p in dest.iterdir()) == ["partition=0", "partition=1", "partition=2"]
    assert list((dest / "partition=1").iterdir()) == []
    checked = run("check", str(dest))
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.splitlines()[-1] == "ok"
    for p in (0, 2):
        assert replayed(dest / f"partition={p}") == replayed(root / f"partition={p}")
    for month in ("2026-10", "2026-11"):
        figures = spend_json(root, month)
        assert figures and spend_json(dest, month) == figures


def test_a_backup_killed_while_copying_holds_no_partition_and_fails_the_check(tmp_path: Path) -> None:
    root, dest = partitioned_root(tmp_path), tmp_path / "backup"
    assert run("backup", str(root), str(dest)).exit_code == 0
    staged = dest / ".partial"  # where the partitions were before they were moved up: as a kill leaves it
    staged.mkdir()
    (dest / "partition=0").rename(staged / "partition=0")
    for p in (1, 2):
        shutil.rmtree(dest / f"partition={p}")
    checked = run("check", str(dest))
    assert checked.exit_code == 2
    assert "not a margins event store" in checked.stderr


def test_a_damaged_partition_fails_the_backup_with_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    root, dest = partitioned_root(tmp_path), tmp_path / "backup"
    victim = read_manifest(root / "partition=2").journal[0].file
    damage(root / "partition=2" / victim)
    result = run("backup", str(root), str(dest))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(root / "partition=2") in lines[0] and victim in lines[0]
    assert not dest.exists()
    dest.mkdir()  # an empty destination the operator made: emptied again, kept
    assert run("backup", str(root), str(dest)).exit_code == 2
    assert dest.is_dir() and list(dest.iterdir()) == []


def test_repair_rebuilds_a_partitions_deleted_manifest(tmp_path: Path) -> None:
    root = partitioned_root(tmp_path)
    before = {month: spend_json(root, month) for month in ("2026-10", "2026-11")}
    events = replayed(root / "partition=2")
    untouched = replayed(root / "partition=0")
    (root / "partition=2" / "manifest.json").unlink()
    assert run("check", str(root)).exit_code == 2
    result = run("repair", str(root))
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert "partition=1: no events yet: nothing to repair" in out
    assert any(line.startswith("partition=2: manifest.json: written (version 2)") for line in out)
    assert any(line.startswith("partition=0: journal: seqs 0..21") for line in out)
    assert run("check", str(root)).exit_code == 0
    assert replayed(root / "partition=2") == events
    assert {month: spend_json(root, month) for month in before} == before
    assert replayed(root / "partition=0") == untouched  # repaired as a plain repair does: nothing lost


def test_repair_refuses_a_partition_whose_enforcer_runs_and_repairs_the_others(tmp_path: Path) -> None:
    root = partitioned_root(tmp_path)
    (root / "partition=2" / "manifest.json").unlink()
    with EventStore.open(root / "partition=0", flush_interval=None, offload=False):
        held = file_states(root / "partition=0")
        result = run("repair", str(root))
        assert file_states(root / "partition=0") == held
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"margins store repair: event store {root / 'partition=0'}: a writer (margins enforce) has this "
        "store open: stop it, then repair",
        "1 of 3 partitions not repaired (see above)",
    ]
    assert (root / "partition=2" / "manifest.json").exists()
    assert run("check", str(root)).exit_code == 0


def malformed(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A root that is not what it should be, and the message naming it."""
    root = tmp_path / "bad"
    if case == "leading zero":
        write_store(root / "partition=07", [3])
        return root, f"event store {root / 'partition=07'}: not a partition directory"
    if case == "store beside partitions":
        write_store(root, [3])
        write_store(root / "partition=0", [3])
        return root, f"event store {root}: is an event store and also holds partition=0/"
    if case == "not a store":
        write_store(root / "partition=0", [3])
        (root / "partition=1").mkdir()
        (root / "partition=1" / "notes.txt").write_text("not a store\n")
        return root, f"event store {root / 'partition=1'}: not a margins event store"
    raise AssertionError(case)


@pytest.mark.parametrize("command", ["check", "backup", "repair"])
@pytest.mark.parametrize("case", ["leading zero", "store beside partitions", "not a store"])
def test_a_malformed_root_is_one_line_and_exit_2(tmp_path: Path, command: str, case: str) -> None:
    root, message = malformed(tmp_path, case)
    before = file_states(root)
    args = [command, str(root), *([str(tmp_path / "dest")] if command == "backup" else [])]
    result = run(*args)
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"margins store {command}: {message}"), lines[0]
    assert file_states(root) == before
    assert not (tmp_path / "dest").exists()
