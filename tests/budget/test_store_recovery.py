"""Opening a store never removes a file it cannot account for, and refuses a manifest it cannot trust."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from budget.cli.spend import spend
from budget.errors import StoreError
from budget.store.event_store import EventStore
from budget.store.integrity import file_digest
from budget.store.manifest import read_manifest
from budget.store.queries import SpendReader
from budget.store.repair import repair_store
from budget.store.segment_writer import merge_run, write_batch
from budget.store.segments import decode_bodies
from tests.budget.store_helpers import file_states, replayed, spend_by_user_month, usage_events, write_store


def _refused(root: Path, *phrases: str, spend_reads_it: bool = True) -> None:
    """EventStore.open and `margins spend` both refuse with one line naming the repair; nothing moves."""
    before = file_states(root)
    with pytest.raises(StoreError) as raised:
        EventStore.open(root, flush_interval=None, offload=False)
    message = str(raised.value)
    assert f"`margins store repair {root}`" in message and "\n" not in message
    for phrase in phrases:
        assert phrase in message, message
    if spend_reads_it:
        result = CliRunner().invoke(spend, ["--store", str(root), "--month", "2026-11"])
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.strip().splitlines() == [f"margins spend: {message}"]
    assert file_states(root) == before


def test_a_missing_manifest_beside_segments_refuses_until_repaired(tmp_path: Path) -> None:
    root = tmp_path / "s"
    events = write_store(root, [10, 10, 10])
    (root / "manifest.json").unlink()
    _refused(root, "manifest.json is missing but journal/0000000000000000-0000000000000009.parquet")
    repair_store(root)
    assert replayed(root) == events
    with SpendReader(root) as reader:
        rows = reader.sql("SELECT user_id, month, spent_nanos FROM spend_by_user_month").rows
    assert {(u, m): s for u, m, s in rows} == spend_by_user_month(events)


def test_a_manifest_one_flush_older_refuses_until_repaired(tmp_path: Path) -> None:
    root = tmp_path / "s"
    events = write_store(root, [20, 20])
    older = (root / "manifest.json").read_bytes()
    with EventStore.open(root, flush_interval=None, offload=False) as store:
        store.append(usage_events(15, start=40))
        store.flush()  # the log that held them is gone once this returns
    events += usage_events(15, start=40)
    (root / "manifest.json").write_bytes(older)
    _refused(root, "manifest.json is stale: it ends at seq 39", "journal/0000000000000040-0000000000000054")
    repair_store(root)
    assert replayed(root) == events


def test_a_log_that_does_not_continue_the_manifest_refuses(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_store(root, [10, 5])
    older = json.loads((root / "manifest.json").read_bytes())
    store = EventStore.open(root, flush_interval=None, offload=False)
    store.append(usage_events(3, start=15))
    store._release()  # a crash: seqs 15..17 are only in wal/15
    older["last_seq"] = 9
    older["journal"] = older["journal"][:1]
    older["usage"] = [s for s in older["usage"] if s["last"] <= 9]
    older["rollup"] = [s for s in older["rollup"] if s["last"] <= 9]
    (root / "manifest.json").write_text(json.dumps(older))
    for segment in root.rglob("0000000000000010-0000000000000014.parquet"):
        segment.unlink()  # and the segments of seqs 10..14 are lost too
    _refused(root, "wal/0000000000000015.jsonl starts at seq 15 but manifest.json ends at seq 9")


def test_an_interrupted_flush_is_removed_and_its_events_flushed_again(tmp_path: Path) -> None:
    root = tmp_path / "s"
    events = write_store(root, [10])
    store = EventStore.open(root, flush_interval=None, offload=False)
    batch = usage_events(5, start=10)
    store.append(batch)
    wals = [str(p) for p in (root / "wal").glob("*.jsonl")]
    write_batch(str(root), 10, 14, None, wals)  # the segments, but the manifest was never replaced
    store._release()
    (root / "journal" / "0000000000000010-0000000000000014.parquet").write_bytes(b"PAR1 half")
    assert replayed(root) == events + batch
    manifest = read_manifest(root)
    assert [s.file for s in manifest.journal][-1] == "journal/0000000000000010-0000000000000014.parquet"
    assert not (root / "quarantine").exists()


def _interrupted_compaction(root: Path) -> tuple[list[object], Path]:
    events = write_store(root, [4] * 8)
    run = read_manifest(root).journal
    merged = merge_run(str(root), "journal", None, run)  # written, never committed
    return list(events), root / merged.file


def test_an_interrupted_compaction_is_removed_once_the_segments_it_merged_verify(tmp_path: Path) -> None:
    root = tmp_path / "s"
    events, merged = _interrupted_compaction(root)
    assert replayed(root) == events
    assert not merged.exists() and not (root / "quarantine").exists()


def test_a_compaction_output_beside_a_damaged_segment_is_kept_and_repair_uses_it(tmp_path: Path) -> None:
    root = tmp_path / "s"
    events, merged = _interrupted_compaction(root)
    damaged = root / read_manifest(root).journal[3].file
    damaged.write_bytes(b"\0" * damaged.stat().st_size)  # same size: only the checksum can tell
    with EventStore.open(root, flush_interval=None, offload=False) as store:
        assert (root / "quarantine" / "journal" / merged.name).exists()
        with pytest.raises(StoreError, match=f"{damaged.relative_to(root)} is damaged"):
            list(store.replay())
    report = repair_store(root)
    assert f"{damaged.relative_to(root)}: written from quarantine/journal/{merged.name}" in report.lines
    assert replayed(root) == events
    assert (root / "quarantine" / "journal" / damaged.name).exists()  # not used, and not deleted
    kept = [s.file for s in read_manifest(root).journal]
    assert kept == [f"journal/{n}" for n in sorted(p.name for p in (root / "journal").iterdir())]
    assert len(kept) == 8  # the intact segments kept, only the damaged one's seqs written again


def test_damage_in_the_middle_of_the_log_is_not_cut(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = EventStore.open(root, flush_interval=None, offload=False)
    store.append(usage_events(5))
    store._release()
    [wal] = (root / "wal").glob("*.jsonl")
    lines = wal.read_bytes().split(b"\n")
    lines[2] = b"x" * len(lines[2])
    wal.write_bytes(b"\n".join(lines))
    # `margins spend` reads segments, not the log: it answers from what was flushed.
    _refused(root, f"{wal.relative_to(root)}: line 3 is not an event", spend_reads_it=False)


def test_a_version_1_manifest_is_checked_by_row_count_then_upgraded_by_the_writer(tmp_path: Path) -> None:
    root = tmp_path / "s"
    events = write_store(root, [10, 10])
    raw = json.loads((root / "manifest.json").read_bytes())
    raw["version"] = 1
    for kind in ("journal", "usage", "rollup"):
        for segment in raw[kind]:
            del segment["size"], segment["sha256"]
    (root / "manifest.json").write_text(json.dumps(raw))
    with SpendReader(root) as reader:
        assert reader.sql("SELECT count(*) FROM usage").rows == [(20,)]
    usage = root / raw["usage"][0]["file"]
    saved = usage.read_bytes()
    shutil.copy(root / raw["usage"][-1]["file"], usage)  # another file's rows
    with pytest.raises(StoreError, match=f"{raw['usage'][0]['file']} is damaged: .* rows"):
        SpendReader(root).sql("SELECT count(*) FROM usage")
    usage.write_bytes(saved)
    assert replayed(root) == events  # the writer upgrades it
    manifest = read_manifest(root)
    assert manifest.version == 2
    assert all(s.sha256 == file_digest(root / s.file)[0] for s in manifest.segments)


def test_replay_after_a_seq_skips_whole_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    events = write_store(root, [10, 10, 10])
    read: list[str] = []
    real = decode_bodies

    def decode(bodies: list[str]) -> list[object]:
        read.append(f"{len(bodies)}")
        return real(bodies)  # type: ignore[return-value]

    monkeypatch.setattr("budget.store.segments.decode_bodies", decode)
    with EventStore.open(root, flush_interval=None, offload=False) as store:
        store.append(usage_events(2, start=30))
        assert list(store.replay(after_seq=14)) == [*events[15:], *usage_events(2, start=30)]
        assert read == ["5", "10"]  # the first segment was never decoded, the second from seq 15
        assert list(store.replay(after_seq=30)) == usage_events(1, start=31)
        assert store.last_seq == 31
