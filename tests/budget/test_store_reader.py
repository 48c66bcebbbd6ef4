"""Reading a store without its writer's lock: replay and a month's usage beside a running writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from budget.domain.events import UsageRecorded
from budget.errors import StoreError
from budget.store.event_store import EventStore
from budget.store.manifest import read_manifest
from budget.store.reader import StoreReader
from sim.calibration.fit import read_store_usage
from sim.cli import main
from sim.errors import FitError
from tests.budget.store_helpers import usage_events, write_store

REPO = Path(__file__).resolve().parents[2]


def test_fit_reads_a_store_that_a_writer_holds_open(tmp_path: Path) -> None:
    root = tmp_path / "s"
    events = write_store(root, [30, 30])
    with EventStore.open(root, flush_interval=None, offload=False) as writer:
        pending = usage_events(5, start=60)
        writer.append(pending)  # in the log only, not in any segment yet
        with pytest.raises(StoreError, match="another process"):
            EventStore.open(root, flush_interval=None)
        november = [e for e in events + pending if isinstance(e, UsageRecorded) and e.month == "2026-11"]
        assert read_store_usage(root, "2026-11") == november
        fitted = CliRunner().invoke(main, ["fit", "--store", str(root), "--month", "2026-11"])
        assert fitted.exit_code == 0, fitted.output
        assert "mau = [5]" in fitted.stdout
        with StoreReader.open(root) as reader:
            assert list(reader.replay()) == events + pending
            assert list(reader.replay(after_seq=58)) == events[59:] + pending
            assert reader.last_seq == 64


def test_a_reader_refuses_a_stale_store_and_names_a_damaged_segment(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_store(root, [10, 10])
    journal = read_manifest(root).journal[1]
    (root / journal.file).write_bytes(b"\0" * (root / journal.file).stat().st_size)
    with pytest.raises(FitError, match=f"{journal.file} is damaged"):
        read_store_usage(root, "2026-11")
    (root / "manifest.json").unlink()
    with pytest.raises(StoreError, match=r"manifest\.json is missing"):
        StoreReader.open(root)


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime, timedelta
    from budget.domain.events import UsageRecorded
    from budget.store.event_store import EventStore

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    with EventStore.open(sys.argv[1], flush_interval=0.02) as store:
        n = 0
        while True:
            count = 1 + n % 23
            store.append([
                UsageRecorded(event_id=f"e{n + i}", user_id=f"u{(n + i) % 7}", month="2026-11",
                              ts=t0 + timedelta(seconds=n + i), model="gpt-4o-mini", input_tokens=10,
                              output_tokens=1, cost_nanos=2_100)
                for i in range(count)
            ])
            n += count
            print(n, flush=True)
    """
)


def test_a_reader_beside_a_writing_process_sees_every_event_up_to_its_cut_in_order(tmp_path: Path) -> None:
    """Flushes and compactions run all the time in the writer; each cut is a prefix of what was
    appended, in order, and cuts never go back."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "s")], stdout=subprocess.PIPE, env=env
    )
    assert writer.stdout is not None
    try:
        seen: list[int] = []
        # 150 cuts, each a replay while the writer flushes every 20 ms and compacts: a count of cuts, not a
        # duration, so a slow machine takes longer instead of testing less; the limit is for a stuck writer.
        limit = time.monotonic() + 300
        while len(seen) < 150 or seen[-1] == seen[0]:
            acknowledged = int(writer.stdout.readline())
            with StoreReader.open(tmp_path / "s") as reader:
                ids = [e.event_id for e in reader.replay() if isinstance(e, UsageRecorded)]
            assert ids == [f"e{i}" for i in range(len(ids))]
            assert len(ids) >= acknowledged  # everything durable before the cut is in it
            seen.append(len(ids))
            assert time.monotonic() < limit, "the writer stopped acknowledging"
        assert seen == sorted(seen) and seen[-1] > seen[0]
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.wait(timeout=10)
        writer.stdout.close()
