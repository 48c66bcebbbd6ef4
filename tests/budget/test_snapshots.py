"""Ledger snapshots, storage side: named parts at a seq, written atomically, checked when loaded."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from budget.domain.events import Event, UsageRecorded
from budget.store.event_store import EventStore
from budget.store.snapshots import SNAPSHOT_FILE, Snapshots
from tests.budget.store_helpers import usage_events, write_store


def _spent(events: list[Event], users: int = 5) -> np.ndarray:
    """A stand-in for the ledger's state: nano-dollars spent per user index."""
    spent = np.zeros(users, dtype=np.int64)
    for event in events:
        if isinstance(event, UsageRecorded):
            spent[int(event.user_id[1:])] += event.cost_nanos
    return spent


def _open(root: Path) -> EventStore:
    return EventStore.open(root, flush_interval=None, offload=False)


def test_a_restart_is_the_latest_snapshot_plus_the_events_after_it(tmp_path: Path) -> None:
    root = tmp_path / "s"
    events = write_store(root, [10, 10])
    grid = np.arange(6, dtype=np.float32).reshape(2, 3)
    with _open(root) as store:
        store.write_snapshot(store.last_seq, {"spent": _spent(events), "grid": grid, "users": b"u0\nu1"})
        later = usage_events(7, start=20)
        store.append(later)
    with _open(root) as store:
        snapshot = store.latest_snapshot()
        assert snapshot is not None and snapshot.seq == 19
        assert snapshot.parts["users"] == b"u0\nu1"
        stored_grid = snapshot.parts["grid"]
        assert isinstance(stored_grid, np.ndarray)
        assert np.array_equal(stored_grid, grid) and stored_grid.dtype == np.float32
        spent = snapshot.parts["spent"] + _spent(list(store.replay(after_seq=snapshot.seq)))
        assert np.array_equal(spent, _spent(events + later))


def test_the_newest_two_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_store(root, [10])
    with _open(root) as store:
        for seq in (3, 6, 9):
            store.write_snapshot(seq, {"n": np.array([seq])})
    assert sorted(p.name for p in (root / "snapshots").iterdir()) == ["0000000000000006", "0000000000000009"]


def test_a_damaged_snapshot_falls_back_to_the_previous_one_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "s"
    write_store(root, [10])
    with _open(root) as store:
        store.write_snapshot(4, {"n": np.array([4])})
        newest = store.write_snapshot(9, {"n": np.array([9])})
        (newest / "n.npy").write_bytes((newest / "n.npy").read_bytes()[:-1] + b"\1")
        with caplog.at_level(logging.WARNING, "margins.store"):
            snapshot = store.latest_snapshot()
        assert snapshot is not None and snapshot.seq == 4
        n = snapshot.parts["n"]
        assert isinstance(n, np.ndarray) and n.tolist() == [4]
        assert "snapshots/0000000000000009/n.npy is damaged" in caplog.text
        (newest / SNAPSHOT_FILE).write_text("{")
        (store.root / "snapshots" / "0000000000000004" / "n.npy").unlink()
        caplog.clear()
        with caplog.at_level(logging.WARNING, "margins.store"):
            assert store.latest_snapshot() is None  # a full replay then
        assert "snapshots/0000000000000009/snapshot.json cannot be read" in caplog.text
        assert "snapshots/0000000000000004/n.npy cannot be read" in caplog.text


def test_a_snapshot_past_the_stores_last_seq_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "s"
    write_store(root, [10])
    snapshots = Snapshots(root)
    snapshots.write(50, {"n": b"from a store that had more events"})
    with _open(root) as store, caplog.at_level(logging.WARNING, "margins.store"):
        assert store.latest_snapshot() is None
    assert "snapshot at seq 50 is past the store's last seq 9" in caplog.text


def test_a_write_that_fails_midway_leaves_the_previous_snapshot_and_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "s"
    write_store(root, [10])
    with _open(root) as store:
        store.write_snapshot(5, {"n": b"five"})

        def crash(path: Path, data: bytes) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("budget.store.snapshots._write_durably", crash)
        with pytest.raises(OSError, match="No space"):
            store.write_snapshot(9, {"n": b"nine"})
        assert [p.name for p in (root / "snapshots").iterdir()] == ["0000000000000005"]
        latest = store.latest_snapshot()
        assert latest is not None and latest.parts == {"n": b"five"}
    (root / "snapshots" / ".tmp-9-crashed").mkdir()  # what a kill -9 mid-write leaves
    with _open(root):
        assert [p.name for p in (root / "snapshots").iterdir()] == ["0000000000000005"]


def test_a_background_snapshot_does_not_hold_up_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "s"
    write_store(root, [10])
    release = threading.Event()
    real_write = Snapshots.write

    def slow_write(self: Snapshots, seq: int, parts: dict[str, bytes]) -> Path:
        assert release.wait(10)
        return real_write(self, seq, parts)

    monkeypatch.setattr(Snapshots, "write", slow_write)
    store = _open(root)
    pending = store.snapshot_in_background(9, {"n": b"nine"})
    assert not pending.done()  # the caller got its future back while the write waits
    store.append(usage_events(1, start=10))  # and the store keeps appending meanwhile
    release.set()
    store.close()  # waits for the snapshot
    assert pending.result().name == "0000000000000009"
    assert json.loads((pending.result() / SNAPSHOT_FILE).read_bytes())["seq"] == 9


def test_a_snapshot_seq_must_be_in_the_store_and_part_names_plain(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_store(root, [3])
    with _open(root) as store:
        with pytest.raises(ValueError, match="seq 3 is not in the store"):
            store.write_snapshot(3, {"n": b""})
        with pytest.raises(ValueError, match=r"part name '\.\./x'"):
            store.write_snapshot(2, {"../x": b""})
