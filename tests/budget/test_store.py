"""The event store: durable append, replay in order, recovery, compaction, one writer, Parquet layout."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow.compute as pc
import pytest

from budget.domain.events import (
    EVENT_TYPES,
    USAGE_COLUMNS,
    DeadLettered,
    Event,
    LimitCrossed,
    ReservationDenied,
    ReservationExpired,
    ReservationGranted,
    ReservationRenewed,
    UsageRecorded,
    UserConfigured,
    encode_event,
)
from budget.errors import StoreError
from budget.store import segments
from budget.store.event_store import EventStore
from budget.store.manifest import read_manifest
from budget.store.queries import SpendReader
from budget.store.reader import StoreReader
from budget.store.segment_writer import read_log
from budget.store.segments import batch_tables, journal_table, usage_table
from tests.budget.store_helpers import T0, usage_events, write_store

REPO = Path(__file__).resolve().parents[2]


def other_events() -> list[Event]:
    return [
        UserConfigured(user_id="u1", ts=T0, cap_nanos=7, timezone="Asia/Tokyo"),
        ReservationGranted(
            reservation_id="r-1",
            request_id="q",
            user_id="u1",
            ts=T0,
            month="2026-10",
            decision="allow",
            model="gpt-4o",
            requested_model="gpt-4o",
            amount_nanos=5,
            expires_at=T0 + timedelta(minutes=10),
        ),
        DeadLettered.of(ts=T0, topic="margins/usage/u1", payload=b"\xff{", reason="bad_json"),
    ]


def test_replay_gives_every_event_in_append_order(tmp_path: Path) -> None:
    events = [*usage_events(10), *other_events(), *usage_events(10, start=10)]
    with EventStore.open(tmp_path / "s", flush_interval=None) as store:
        store.append(events[:7])
        store.flush()
        store.append(events[7:])
        assert list(store.replay()) == events  # segments, then what is still pending
    with EventStore.open(tmp_path / "s", flush_interval=None) as store:
        assert list(store.replay()) == events
        assert store.manifest.last_seq == len(events) - 1


def test_usage_segments_have_exactly_the_usage_columns(tmp_path: Path) -> None:
    with EventStore.open(tmp_path / "s", flush_interval=None) as store:
        store.append([*usage_events(40), *other_events()])
    manifest = read_manifest(tmp_path / "s")
    assert {s.month for s in manifest.usage} == {"2026-10", "2026-11"}
    for segment in manifest.usage:
        assert f"month={segment.month}" in segment.file
        described = duckdb.execute(
            f"DESCRIBE SELECT * FROM read_parquet('{tmp_path / 's' / segment.file}')"
        ).fetchall()
        assert [(row[0], row[1]) for row in described] == [
            (name, "TIMESTAMP WITH TIME ZONE" if kind == "TIMESTAMPTZ" else kind)
            for name, kind in USAGE_COLUMNS.items()
        ]
        rows = duckdb.execute(
            f"SELECT DISTINCT source, run_id, month FROM read_parquet('{tmp_path / 's' / segment.file}')"
        ).fetchall()
        assert rows == [("live", "", segment.month)]


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with EventStore.open(tmp_path / "s", flush_interval=None), pytest.raises(StoreError, match="another"):
        EventStore.open(tmp_path / "s", flush_interval=None)
    with EventStore.open(tmp_path / "s", flush_interval=None):
        pass  # released on close


def test_a_torn_last_log_line_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    events = usage_events(5)
    store = EventStore.open(tmp_path / "s", flush_interval=None)
    store.append(events)
    # Simulate a crash: release without flushing, then a write that never returned leaves half a line.
    store._release()
    [wal] = list((tmp_path / "s" / "wal").glob("*.jsonl"))
    with wal.open("ab") as log:
        log.write(b'{"type":"usage_recorded","event_id":"half')
    reopened = EventStore.open(tmp_path / "s", flush_interval=None)
    assert list(reopened.replay()) == events
    assert reopened.manifest.last_seq == 4  # the recovered tail keeps its seqs
    reopened.append(usage_events(1, start=5))
    reopened._release()  # and crashes again before flushing
    with EventStore.open(tmp_path / "s", flush_interval=None) as again:
        assert list(again.replay()) == usage_events(6)


def test_an_unlisted_segment_the_log_does_not_hold_is_kept_in_quarantine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unlisted segment is deleted only when the log still holds its events (an interrupted flush,
    test_store_recovery.py); this one's are nowhere else, so it is moved aside, not deleted."""
    with EventStore.open(tmp_path / "s", flush_interval=None) as store:
        store.append(usage_events(3))
    stray = tmp_path / "s" / "usage" / "month=2026-11" / "0000000000000099-0000000000000099.parquet"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"PAR1 half written")
    with (
        caplog.at_level(logging.WARNING, "margins.store"),
        EventStore.open(tmp_path / "s", flush_interval=None) as store,
    ):
        assert not stray.exists()
        assert list(store.replay()) == usage_events(3)
    kept = tmp_path / "s" / "quarantine" / "usage" / "month=2026-11" / stray.name
    assert kept.read_bytes() == b"PAR1 half written"
    assert f"moved {stray.relative_to(tmp_path / 's')} to quarantine/" in caplog.text


def test_compaction_merges_small_segments_and_changes_nothing_else(tmp_path: Path) -> None:
    events = [*usage_events(60), *other_events()]
    with EventStore.open(tmp_path / "s", flush_interval=None) as store:
        for start in range(0, len(events), 6):
            store.append(events[start : start + 6])
            store.flush()
        before = read_manifest(tmp_path / "s")
        assert len(before.journal) == 11
        store.compact(min_segments=4)
        after = read_manifest(tmp_path / "s")
        assert len(after.journal) == 1
        # November had 9 small segments and is merged; October's 2 are too few to bother.
        assert sorted(s.month or "" for s in after.usage) == ["2026-10", "2026-10", "2026-11"]
        assert sum(s.rows for s in after.usage) == 60
        # Replaced files wait out the readers' grace period before they go.
        assert sorted(s.month or "" for s in after.rollup) == ["2026-10", "2026-10", "2026-11"]
        kept = {s.file for s in (*after.usage, *after.rollup)}
        replaced = {s.file for s in (*before.journal, *before.usage, *before.rollup)} - kept
        assert {f for f, _ in after.retired} == replaced
        assert all((tmp_path / "s" / f).exists() for f, _ in after.retired)
        assert list(store.replay()) == events
        with SpendReader(tmp_path / "s") as reader:  # the merged rollups still sum to the usage rows
            by_rollup = reader.sql("SELECT user_id, month, spent_nanos, events FROM spend_by_user_month").rows
            by_rows = reader.sql(
                "SELECT user_id, month, sum(cost_nanos), count(*) FROM usage GROUP BY ALL"
            ).rows
        assert sorted(by_rollup) == sorted(by_rows) and len(by_rows) == 10
        store.append(usage_events(1, start=60))
    with EventStore.open(tmp_path / "s", flush_interval=None) as store:
        assert list(store.replay()) == [*events, *usage_events(1, start=60)]


def test_the_background_flusher_makes_appends_visible_to_readers(tmp_path: Path) -> None:
    with EventStore.open(tmp_path / "s", flush_interval=0.05) as store:
        store.append(usage_events(25))
        deadline = time.monotonic() + 120  # a generous limit: a busy machine can delay the flusher by seconds
        while read_manifest(tmp_path / "s").last_seq < 24:
            assert time.monotonic() < deadline, "the flusher did not write a segment within 120 s"
            time.sleep(0.02)


def test_a_closed_store_refuses_appends(tmp_path: Path) -> None:
    store = EventStore.open(tmp_path / "s", flush_interval=None)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.append(usage_events(1))


def test_a_missing_directory_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such directory"):
        read_manifest(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a margins event store"):
        read_manifest(tmp_path / "empty")


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime, timedelta
    from budget.domain.events import UsageRecorded
    from budget.store.event_store import EventStore

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    run = sys.argv[2]
    with EventStore.open(sys.argv[1], flush_interval=0.02) as store:
        n = 0
        while True:
            batch = [
                UsageRecorded(event_id=f"{run}-e{n + i}", user_id=f"u{(n + i) % 13}",
                              ts=t0 + timedelta(seconds=n + i), model="gpt-4o-mini", input_tokens=10,
                              output_tokens=1, cost_nanos=2_100, month="2026-11")
                for i in range(1 + n % 37)
            ]
            store.append(batch)
            n += len(batch)
            print(n, flush=True)  # every event below n is durable: append returned
    """
)


def _run_and_kill(tmp_path: Path, run: str, kill_after: float) -> int:
    """Run the writer until `kill_after` s past start-up, SIGKILL it; how many events it acknowledged."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "s"), run], stdout=subprocess.PIPE, env=env, cwd=REPO
    )
    assert writer.stdout is not None
    acknowledged = 0
    started = time.monotonic()
    while time.monotonic() < started + 30:
        line = writer.stdout.readline()
        assert line, "the writer exited early"
        acknowledged = int(line)
        if acknowledged > 0 and time.monotonic() - started > kill_after + 0.5:  # 0.5 s to start up
            break
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    for line in writer.stdout:  # anything it printed before dying was durable too
        acknowledged = int(line)
    writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    return acknowledged


def test_sigkill_after_append_returned_loses_nothing_crash_after_crash(tmp_path: Path) -> None:
    """Each writer resumes a store the previous one left mid-flight (log tail, maybe half a segment)."""
    runs = {"a": 0.3, "b": 1.1}
    acknowledged = {run: _run_and_kill(tmp_path, run, kill_after) for run, kill_after in runs.items()}
    with EventStore.open(tmp_path / "s", flush_interval=None) as store:
        ids = [e.event_id for e in store.replay() if isinstance(e, UsageRecorded)]
    assert ids == sorted(ids, key=lambda i: i[0])  # run after run
    for run, count in acknowledged.items():
        mine = [i for i in ids if i.startswith(f"{run}-")]
        assert count > 0 and len(mine) >= count  # nothing acknowledged was lost
        assert mine == [f"{run}-e{i}" for i in range(len(mine))]  # in order, nothing twice or invented


def test_the_columnar_batch_parse_agrees_with_the_event_objects() -> None:
    la = ZoneInfo("America/Los_Angeles")
    events: list[Event] = [
        *usage_events(12),
        *other_events(),
        UsageRecorded(  # no month of its own, a local offset, microseconds: filed under its UTC month
            event_id="x1",
            user_id="u9",
            ts=datetime(2026, 1, 31, 23, 30, 0, 123, tzinfo=la),
            model="gpt-5-nano",
            input_tokens=5,
            output_tokens=1,
            cost_nanos=7,
            cached_input_tokens=2,
            cache_layer="semantic",
            outcome="cache_hit",
            reservation_id="r-9",
        ),
        ReservationDenied(
            request_id="q9", user_id="u9", ts=T0, month="2026-10", model="m", amount_nanos=1,
            remaining_nanos=0, reason="cap reached",
        ),
        LimitCrossed(
            user_id="u9", ts=T0, month="2026-10", limit="cap", spent_nanos=1, reserved_nanos=0, cap_nanos=1
        ),
        ReservationExpired(reservation_id="r-1", user_id="u1", ts=T0, month="2026-09", amount_nanos=5),
        ReservationRenewed(reservation_id="r-1", user_id="u1", ts=T0, expires_at=T0),
    ]  # fmt: skip
    assert {type(e) for e in events} == set(EVENT_TYPES)  # every type, parsed both ways
    bodies = [encode_event(e) for e in events]
    journal, by_month = batch_tables(bodies, 40)
    assert journal.equals(journal_table(events, bodies, 40))
    assert journal.column("month").to_pylist()[-5:] == ["2026-02", "2026-10", "2026-10", "2026-09", None]
    reasons = journal.column("reason").to_pylist()
    assert [r for r in reasons if r is not None] == ["bad_json", "cap reached"]
    usages = [e for e in events if isinstance(e, UsageRecorded)]
    expected = usage_table(usages)
    assert sorted(by_month) == ["2026-02", "2026-10", "2026-11"]
    for month, table in by_month.items():
        assert table.equals(expected.filter(pc.equal(expected.column("month"), month))), month


def test_retired_files_go_after_the_grace_period_but_not_during_a_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("budget.store.event_store.RETIRE_GRACE_S", 0.0)
    events = usage_events(40)
    with EventStore.open(tmp_path / "s", flush_interval=None) as store:
        for start in range(0, 40, 5):
            store.append(events[start : start + 5])
            store.flush()
        replaying = store.replay()
        assert next(replaying) == events[0]  # a replay is under way
        store.compact(min_segments=4)
        retired = [tmp_path / "s" / f for f, _ in store.manifest.retired]
        assert retired
        store.append(usage_events(1, start=40))
        store.flush()
        assert all(path.exists() for path in retired) and store.manifest.retired
        assert list(replaying) == events[1:]
        store.append(usage_events(1, start=41))
        store.flush()
        assert not any(path.exists() for path in retired) and not store.manifest.retired
        assert list(store.replay()) == usage_events(42)


def test_compaction_rewrites_each_row_a_logarithmic_number_of_times(tmp_path: Path) -> None:
    """Steady small flushes. Merging everything accumulated whenever 8 segments pile up would rewrite
    about 13k rows here (the whole journal and usage every 7 flushes), and quadratically more with time;
    merging like a binary counter rewrites each row a few times (about 6.5k for journal, usage and rollup
    together)."""
    flushes, per_flush = 96, 10
    with EventStore.open(tmp_path / "s", flush_interval=None) as store:
        for i in range(flushes):
            store.append(usage_events(per_flush, start=i * per_flush))
            store.flush()
            store.compact(min_segments=8)
        events = flushes * per_flush
        journal = store.manifest.journal
        assert len(journal) <= 8 * 4 and sum(s.rows for s in journal) == events
        assert store.compacted_rows <= 10 * events, store.compacted_rows
        assert [getattr(e, "event_id", None) for e in store.replay()] == [f"e{i}" for i in range(events)]


def test_segments_are_written_by_the_child_process_and_the_store_survives_its_death(tmp_path: Path) -> None:
    events = [*usage_events(30), *other_events()]
    with EventStore.open(tmp_path / "s", flush_interval=None, offload=True) as store:
        writer = store._writer
        assert writer is not None and writer._child is not None
        child = writer._child
        store.append(events[:20])
        store.flush()
        assert writer._child is child  # it answered, so it wrote them
        assert read_manifest(tmp_path / "s").last_seq == 19
        child.kill()
        child.wait()
        store.append(events[20:])
        store.flush()  # written here instead
        assert writer._child is None
        assert list(store.replay()) == events
    with EventStore.open(tmp_path / "s", flush_interval=None) as store:
        assert list(store.replay()) == events


def test_the_segment_writer_reads_exactly_the_batch_from_the_log_files(tmp_path: Path) -> None:
    older, newer = tmp_path / "0000000000000000.jsonl", tmp_path / "0000000000000003.jsonl"
    older.write_bytes(b"l0\nl1\nl2\n")
    newer.write_bytes(b"l3\nl4\ntorn")  # a torn tail never returned from append
    assert read_log([str(newer), str(older)], 1, 4) == [b"l1", b"l2", b"l3", b"l4"]
    assert read_log([str(newer)], 3, 3) == [b"l3"]
    with pytest.raises(StoreError, match=r"lacks seqs 3\.\.5"):
        read_log([str(newer)], 3, 5)


def test_replay_reads_a_segment_a_batch_at_a_time_from_any_seq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "REPLAY_BATCH", 7)  # 25 events: batches of 7, 7, 7 and 4
    events = write_store(tmp_path / "s", [25])
    with EventStore.open(tmp_path / "s", flush_interval=None, offload=False) as store:
        for after_seq in range(-1, 25):
            assert list(store.replay(after_seq=after_seq)) == events[after_seq + 1 :]
    with StoreReader.open(tmp_path / "s") as reader:
        for after_seq in (-1, 6, 7, 13, 24):
            assert list(reader.replay(after_seq=after_seq)) == events[after_seq + 1 :]
