"""`margins store check` and `margins store repair`: verify everything, rebuild from the journal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from budget.cli.store import store_group
from budget.store.event_store import EventStore
from budget.store.journal_plan import LOG, Source, plan_journal
from budget.store.manifest import parse_segment_path, read_manifest
from budget.store.queries import SpendReader
from tests.budget.store_helpers import file_states, replayed, spend_by_user_month, usage_events, write_store


def run(*args: str) -> Result:
    return CliRunner().invoke(store_group, list(args))


def _spend(root: Path) -> dict[tuple[str, str], int]:
    with SpendReader(root) as reader:
        rows = reader.sql("SELECT user_id, month, spent_nanos FROM spend_by_user_month").rows
    return {(u, m): s for u, m, s in rows}


def test_check_says_what_it_checked_and_exits_0(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_store(root, [10, 10])
    store = EventStore.open(root, flush_interval=None, offload=False)
    store.append(usage_events(3, start=20))
    store.write_snapshot(22, {"spent": np.arange(5, dtype=np.int64), "meta": b"{}"})
    store._release()  # a crash: the three events stay in the log
    result = run("check", str(root))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == "manifest.json: version 2, seqs 0..19 in 2 journal segments; 3 usage and 3 rollup segments"
    )
    assert lines[1].startswith("segments: 8 files, ") and lines[1].endswith(
        "size, sha256 and row count of each"
    )
    assert "log: 1 file, 3 events after seq 19, each an event" in lines
    assert "snapshots: 1 verified: seq 22 (2 parts)" in lines
    assert lines[-1] == "ok"


def test_check_lists_every_problem_one_line_each_and_exits_2(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_store(root, [10, 10])
    manifest = read_manifest(root)
    (root / manifest.usage[0].file).write_bytes(b"not parquet")
    (root / manifest.rollup[-1].file).unlink()
    stray = root / "journal" / "0000000000000050-0000000000000059.parquet"
    shutil.copy(root / manifest.journal[0].file, stray)
    result = run("check", str(root))
    assert result.exit_code == 2
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 3
    assert all(p.startswith(f"margins store check: {root}: ") for p in problems)
    assert any(f"{manifest.usage[0].file} is damaged" in p for p in problems)
    assert any(f"{manifest.rollup[-1].file} is missing" in p for p in problems)
    assert any("manifest.json is stale" in p and "0000000000000050-0000000000000059" in p for p in problems)
    assert (
        result.stdout.splitlines()[-1]
        == f"3 problems; `margins store repair {root}` rebuilds it from the journal and the log"
    )


def test_repair_refuses_while_a_writer_holds_the_store(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_store(root, [5])
    with EventStore.open(root, flush_interval=None, offload=False):
        before = file_states(root)
        result = run("repair", str(root))
        assert result.exit_code == 2
        assert result.stderr.strip() == (
            f"margins store repair: event store {root}: a writer (margins enforce) has this store open: "
            "stop it, then repair"
        )
        assert file_states(root) == before


def test_repair_rebuilds_damaged_usage_and_rollup_from_the_journal(tmp_path: Path) -> None:
    root = tmp_path / "s"
    events = write_store(root, [10, 10, 10])
    manifest = read_manifest(root)
    (root / manifest.usage[1].file).write_bytes(b"junk")
    (root / manifest.rollup[2].file).unlink()
    (root / "manifest.json").unlink()
    result = run("repair", str(root))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("journal: seqs 0..29 from 3 pieces (3 kept, 0 from")
    assert run("check", str(root)).exit_code == 0
    assert replayed(root) == events
    assert _spend(root) == spend_by_user_month(events)


def test_repair_changes_nothing_when_seqs_are_in_no_copy(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_store(root, [10, 10, 10])
    (root / read_manifest(root).journal[1].file).write_bytes(b"junk")
    before = file_states(root)
    result = run("repair", str(root))
    assert result.exit_code == 2
    assert "seqs 10..19 are in no journal file and not in the log: nothing was changed" in result.stderr
    assert file_states(root) == before
    dry = run("repair", "--dry-run", str(tmp_path / "s"))
    assert dry.exit_code == 2 and file_states(root) == before


def test_a_dry_run_says_what_repair_would_do_and_does_nothing(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_store(root, [10, 10])
    (root / "manifest.json").unlink()
    before = file_states(root)
    result = run("repair", "--dry-run", str(root))
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "dry run: nothing written"
    assert file_states(root) == before


def test_repair_keeps_the_log_and_its_events(tmp_path: Path) -> None:
    root = tmp_path / "s"
    events = write_store(root, [10])
    store = EventStore.open(root, flush_interval=None, offload=False)
    store.append(usage_events(4, start=10))
    store._release()  # crashed: seqs 10..13 only in the log
    (root / "manifest.json").unlink()
    report = run("repair", str(root))
    assert report.exit_code == 0, report.output
    assert "journal/0000000000000010-0000000000000013.parquet: written from the log" in report.stdout
    assert list((root / "wal").iterdir()) == []
    assert replayed(root) == events + usage_events(4, start=10)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flushes=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    compact=st.booleans(),
    loss=st.sampled_from(["manifest", "older manifest", "usage", "rollup", "journal with a retired copy"]),
    pick=st.integers(0, 1_000),
)
def test_whatever_was_lost_repair_gives_back_every_event_and_the_same_spend(
    tmp_path_factory: object, flushes: list[int], compact: bool, loss: str, pick: int
) -> None:
    """Stores of random flushes (and a compaction), then one loss; repair brings back every event, and
    the spend views agree with the events again."""
    root = tmp_path_factory.mktemp("r") / "s"  # type: ignore[attr-defined]
    events = write_store(root, flushes)
    older = (root / "manifest.json").read_bytes()
    events += write_store(root, [3], start=len(events))
    if compact or loss == "journal with a retired copy":
        with EventStore.open(root, flush_interval=None, offload=False) as store:
            store.compact(min_segments=2)
    manifest = read_manifest(root)
    if loss == "manifest":
        (root / "manifest.json").unlink()
    elif loss == "older manifest":
        (root / "manifest.json").write_bytes(older)
    elif loss in ("usage", "rollup"):
        segments = getattr(manifest, loss)
        (root / segments[pick % len(segments)].file).write_bytes(b"\0" * 100)
    else:  # a merged journal segment, while the segments it replaced wait out the grace period
        retired = [parse_segment_path(f) for f, _ in manifest.retired if f.startswith("journal/")]
        merged = [s for s in manifest.journal if any(r and s.first <= r.first <= s.last for r in retired)]
        assume(merged)
        (root / merged[pick % len(merged)].file).write_bytes(b"\0" * 100)
    result = run("repair", str(root))
    assert result.exit_code == 0, result.output
    assert replayed(root) == events
    assert _spend(root) == spend_by_user_month(events)
    check = run("check", str(root))
    assert check.exit_code == 0, check.output


def test_plan_prefers_whole_verified_files_and_cuts_others_short() -> None:
    verified = [Source(0, 9, "journal/a", verified=True), Source(20, 29, "journal/c", verified=True)]
    merged = Source(0, 29, "quarantine/journal/m")
    log = Source(25, 34, LOG, bodies=tuple(b"x" for _ in range(10)))
    pieces, missing = plan_journal([*verified, merged, log])
    assert [(p.first, p.last, p.source.file) for p in pieces] == [
        (0, 9, "journal/a"),
        (10, 19, "quarantine/journal/m"),
        (20, 29, "journal/c"),
        (30, 34, LOG),
    ]
    assert missing is None
    assert plan_journal([Source(0, 4, "journal/a"), Source(8, 9, LOG)])[1] == (5, 7)


def test_a_snapshot_that_does_not_verify_is_a_problem_and_repair_moves_it_aside(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_store(root, [10])
    with EventStore.open(root, flush_interval=None, offload=False) as store:
        path = store.write_snapshot(9, {"a": b"abc"})
    (path / "a.bin").write_bytes(b"abd")
    meta = json.loads((path / "snapshot.json").read_bytes())
    result = run("check", str(root))
    assert result.exit_code == 2
    damaged = "snapshots/0000000000000009/a.bin is damaged (size or sha256 differs)"
    assert result.stderr.strip() == f"margins store check: {root}: {damaged}"
    assert run("repair", str(root)).exit_code == 0
    assert (root / "quarantine" / "snapshots" / path.name / "snapshot.json").read_bytes() == json.dumps(
        meta, indent=1
    ).encode()
    assert run("check", str(root)).exit_code == 0
