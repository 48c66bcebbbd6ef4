"""The enforcer's ledger snapshots: a restart is the newest usable snapshot plus the events after it, and
gives the ledger a full replay gives; a snapshot is written only once the store holds its seq; one taken
under other state-shaping settings, or that cannot be restored, is passed over for a full replay."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from budget.domain.config import EnforcerConfig
from budget.domain.events import Event
from budget.domain.ledger import Ledger
from budget.service.snapshots import META, SnapshotTaker, restore, settings_key
from budget.store.event_store import EventStore
from tests.budget.ledger_helpers import CATALOG, NOW, authorize, make_config, usage

CONFIG = make_config(cap_usd="0.05")


def decided_events(count: int, users: int = 7) -> Iterator[Event]:
    """A stream decided by a ledger of its own: usage over a month's end, authorizations, denials."""
    ledger = Ledger(CONFIG, CATALOG)
    for i in range(count):
        now = NOW + timedelta(hours=3 * i)
        user = f"user-{i % users}"
        command = authorize(f"r{i}", user=user) if i % 4 == 0 else usage(f"e{i}", user=user, ts=now)
        yield from ledger.execute(command, now)


def _open(root: Path) -> EventStore:
    return EventStore.open(root, flush_interval=None, offload=False)


def _replayed(store: EventStore, config: EnforcerConfig = CONFIG) -> Ledger:
    ledger = Ledger(config, CATALOG)
    ledger.apply_all(store.replay())
    return ledger


def _run(store: EventStore, events: list[Event], every: int, batch: int = 10) -> SnapshotTaker:
    """What the enforcer does: apply a batch, commit it, then let the taker look."""
    ledger = Ledger(CONFIG, CATALOG)
    ledger.apply_all(store.replay())
    taker = SnapshotTaker(store, ledger, settings_key(CONFIG), covered=None, every_events=every)
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        ledger.apply_all(chunk)
        store.append(chunk)
        taker.after_commit(uncommitted=0)
    return taker


def test_a_restart_is_the_newest_snapshot_plus_the_events_after_it(tmp_path: Path) -> None:
    events = list(decided_events(400))
    with _open(tmp_path / "s") as store:
        taker = _run(store, events[:300], every=100)
        taker.final(uncommitted=0)
        assert taker.written >= 2
        snapshot_seq = store.last_seq
        store.append(events[300:])  # after the last snapshot: a crash before the next one
    with _open(tmp_path / "s") as store:
        restored = restore(store, CONFIG, CATALOG)
        assert restored.snapshot_seq == snapshot_seq
        assert restored.replayed == store.last_seq - snapshot_seq > 0
        assert restored.ledger.snapshot() == _replayed(store).snapshot()


def test_a_stop_with_events_uncommitted_writes_no_snapshot(tmp_path: Path) -> None:
    events = list(decided_events(60))
    with _open(tmp_path / "s") as store:
        ledger = Ledger(CONFIG, CATALOG)
        taker = SnapshotTaker(store, ledger, settings_key(CONFIG), covered=None, every_events=20)
        ledger.apply_all(events[:30])
        store.append(events[:25])  # the ledger runs 5 events ahead of the store
        taker.after_commit(uncommitted=5)  # due, taken at seq 29: waits for the store to hold it
        taker.final(uncommitted=5)  # a stop before they commit: no snapshot describes them
        assert store.latest_snapshot() is None and taker.written == 0


def test_a_snapshot_taken_ahead_is_written_after_the_commit_that_reaches_it(tmp_path: Path) -> None:
    events = list(decided_events(60))
    with _open(tmp_path / "s") as store:
        ledger = Ledger(CONFIG, CATALOG)
        taker = SnapshotTaker(store, ledger, settings_key(CONFIG), covered=None, every_events=20)
        ledger.apply_all(events[:30])
        store.append(events[:25])
        taker.after_commit(uncommitted=5)  # due: taken at seq 29, which the store does not hold yet
        assert store.latest_snapshot() is None
        store.append(events[25:30])
        taker.after_commit(uncommitted=0)
        taker.final(uncommitted=0)
        newest = store.latest_snapshot()
        assert newest is not None and newest.seq == 29
    with _open(tmp_path / "s") as store:
        restored = restore(store, CONFIG, CATALOG)
        assert (restored.snapshot_seq, restored.replayed) == (29, 0)
        assert restored.ledger.snapshot() == _replayed(store).snapshot()


def test_other_state_shaping_settings_mean_a_full_replay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = list(decided_events(120))
    with _open(tmp_path / "s") as store:
        _run(store, events, every=50).final(uncommitted=0)
    other = replace(CONFIG, month_grace_s=CONFIG.month_grace_s + 60)
    assert settings_key(other) != settings_key(CONFIG)
    assert settings_key(replace(CONFIG, default_plan=CONFIG.plans["pro"])) == settings_key(CONFIG)
    with _open(tmp_path / "s") as store, caplog.at_level(logging.WARNING):
        restored = restore(store, other, CATALOG)
        assert (restored.snapshot_seq, restored.replayed) == (None, store.last_seq + 1)
        assert restored.ledger.snapshot() == _replayed(store, other).snapshot()
    assert "replaying the whole log" in caplog.text


def test_a_snapshot_that_cannot_be_restored_means_a_full_replay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = list(decided_events(120))
    with _open(tmp_path / "s") as store:
        ledger = Ledger(CONFIG, CATALOG)
        ledger.apply_all(events)
        store.append(events)
        meta, arrays = ledger.to_snapshot(store.last_seq).encode()
        meta["settings"] = settings_key(CONFIG)
        del arrays["users.ends"]  # verifies as files, does not fit as a ledger
        store.write_snapshot(store.last_seq, {META: json.dumps(meta).encode(), **arrays})
    with _open(tmp_path / "s") as store, caplog.at_level(logging.WARNING):
        restored = restore(store, CONFIG, CATALOG)
        assert restored.snapshot_seq is None and restored.replayed == len(events)
        assert restored.ledger.snapshot() == _replayed(store).snapshot()
    assert "cannot be restored" in caplog.text


def test_a_stop_after_a_full_replay_snapshots_it_even_with_nothing_new(tmp_path: Path) -> None:
    events = list(decided_events(50))
    with _open(tmp_path / "s") as store:
        store.append(events)
    for expected_written in (1, 0):  # after the full replay; then restored from that snapshot
        with _open(tmp_path / "s") as store:
            restored = restore(store, CONFIG, CATALOG)
            taker = SnapshotTaker(
                store, restored.ledger, settings_key(CONFIG), covered=restored.snapshot_seq, every_events=1000
            )
            taker.final(uncommitted=0)
            assert taker.written == expected_written
            newest = store.latest_snapshot()
            assert newest is not None and newest.seq == len(events) - 1
