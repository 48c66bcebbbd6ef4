"""`margins store backup`: a consistent, verified copy of a store, also while `margins enforce` writes to it.

The copy passes `margins store check`, holds exactly the events up to its cut (so each user's spend in it is
the original's spend at that seq), and an enforcer started on it answers with that spend. A damaged segment
or a destination in use stops it with one line and exit 2, leaving nothing that looks like a backup.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from budget.domain.events import Event, UsageRecorded
from budget.store.event_store import EventStore
from budget.store.manifest import read_manifest
from budget.store.reader import StoreReader
from sim.cli import main as margins
from tests.budget.broker import Broker
from tests.budget.enforcer_process import EnforcerProcess
from tests.budget.mqtt_helpers import mqtt, usage_body, wait_for_status
from tests.budget.store_helpers import file_states, usage_events, write_store

MARGINS = str(Path(sys.executable).parent / "margins")
CUT = re.compile(r"backed up (\d+) events \(seq 0\.\.(-?\d+)\)")


def run_backup(store: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MARGINS, "store", "backup", str(store), str(dest)], capture_output=True, text=True, timeout=600
    )


def cut_of(output: str) -> int:
    found = CUT.search(output)
    assert found is not None, output
    return int(found.group(2))


def spent_by_user(events: Sequence[Event]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for event in events:
        if isinstance(event, UsageRecorded):
            totals[event.user_id] += event.cost_nanos
    return dict(totals)


def read_events(store: Path) -> list[Event]:
    with StoreReader.open(store) as reader:
        return list(reader.replay())


def test_a_backup_holds_the_segments_the_log_and_the_snapshot_at_its_cut(tmp_path: Path) -> None:
    source, dest = tmp_path / "store", tmp_path / "backup"
    flushed = write_store(source, [10, 20, 30])
    with EventStore.open(source, flush_interval=None, offload=False) as store:
        logged = usage_events(7, start=60)
        store.append(logged)  # in the log only: the writer still holds it
        store.write_snapshot(40, {"part": np.arange(5)})
        store.write_snapshot(66, {"part": np.arange(6)})
        done = run_backup(source, dest)
        after = usage_events(3, start=67)
        store.append(after)  # past the cut
    assert done.returncode == 0, done.stderr
    assert cut_of(done.stdout) == 66
    assert "snapshot at seq 66" in done.stdout
    checked = CliRunner().invoke(margins, ["store", "check", str(dest)])
    assert checked.exit_code == 0, checked.output
    assert read_events(dest) == [*flushed, *logged]
    assert sorted(p.name for p in (dest / "snapshots").iterdir()) == [f"{66:016d}"]
    assert not (dest / "LOCK").exists()
    assert read_manifest(dest).retired == []


def test_an_enforcer_writing_under_load_is_backed_up_at_one_cut_with_its_spend(
    enforcer_process: EnforcerProcess, caps_file: Path, tmp_path: Path
) -> None:
    enforcer_process.start()
    port = enforcer_process.broker.port
    dest = tmp_path / "backup"
    users = [f"u{i}" for i in range(8)]
    now = datetime.now(UTC).isoformat()

    def batch(number: int) -> tuple[str, bytes]:
        user = users[number % len(users)]
        bodies = [usage_body(f"b{number}-{i}", user=user, ts=now, input_tokens=100 + i) for i in range(20)]
        return f"margins/usage/{user}", json.dumps(bodies).encode()

    async def scenario() -> subprocess.CompletedProcess[str]:
        backed_up = asyncio.Event()
        async with mqtt(port) as pub:
            for number in range(40):
                await pub.publish(*batch(number), qos=1)
            await wait_for_events(enforcer_process.store, 40 * 20)

            async def keep_publishing() -> None:
                number = 40
                while not backed_up.is_set():
                    await pub.publish(*batch(number), qos=1)
                    number += 1
                    await asyncio.sleep(0.02)
                for extra in range(number, number + 10):  # certainly past the cut
                    await pub.publish(*batch(extra), qos=1)

            publishing = asyncio.create_task(keep_publishing())
            done = await asyncio.to_thread(run_backup, enforcer_process.store, dest)
            backed_up.set()
            await publishing
        return done

    done = asyncio.run(scenario())
    assert done.returncode == 0, done.stderr
    cut = cut_of(done.stdout)
    assert enforcer_process.terminate() == 0
    original = read_events(enforcer_process.store)
    assert 40 * 20 <= cut + 1 < len(original)

    checked = CliRunner().invoke(margins, ["store", "check", str(dest)])
    assert checked.exit_code == 0, checked.output
    copied = read_events(dest)
    assert copied == original[: cut + 1]
    expected = spent_by_user(original[: cut + 1])
    assert set(expected) == set(users)
    assert spent_by_user(copied) == expected

    broker = Broker(tmp_path / "restored-broker", secured=False)
    broker.start()
    restored = EnforcerProcess(broker, dest, caps_file, tmp_path / "restored.log")
    try:
        restored.start()
        asyncio.run(wait_for_status(broker.port, expected, timeout=300.0))
        answer = CliRunner().invoke(
            margins, ["status", users[0], "--broker", broker.url, "--format", "json", "--timeout", "30"]
        )
        assert answer.exit_code == 0, answer.output
        assert round(json.loads(answer.output)["spent_usd"] * 1e9) == expected[users[0]]
        assert restored.terminate() == 0
    finally:
        restored.kill()
        broker.kill()


async def wait_for_events(store: Path, count: int, timeout: float = 300.0) -> None:
    """Until the store holds `count` events (read beside the writer, as the backup will)."""
    async with asyncio.timeout(timeout):
        while True:
            with StoreReader.open(store) as reader:
                if reader.last_seq + 1 >= count:
                    return
            await asyncio.sleep(0.1)


def test_a_damaged_segment_fails_the_backup_with_one_line_and_leaves_no_backup(tmp_path: Path) -> None:
    source, dest = tmp_path / "store", tmp_path / "backup"
    write_store(source, [10, 20, 30])
    victim = read_manifest(source).usage[1].file
    path = source / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    done = run_backup(source, dest)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert victim in lines[0] and "sha256" in lines[0]
    assert not dest.exists()


def test_an_interrupted_backup_has_no_manifest_and_fails_the_check(tmp_path: Path) -> None:
    source, dest = tmp_path / "store", tmp_path / "backup"
    write_store(source, [10, 20])
    assert run_backup(source, dest).returncode == 0
    (dest / "manifest.json").unlink()  # what a backup stopped before its last step leaves
    checked = CliRunner().invoke(margins, ["store", "check", str(dest)])
    assert checked.exit_code == 2
    assert "manifest.json is missing" in checked.output


@pytest.mark.parametrize("occupied", ["a file", "a directory with a file"])
def test_a_destination_in_use_is_refused_with_one_line(tmp_path: Path, occupied: str) -> None:
    source, dest = tmp_path / "store", tmp_path / "backup"
    write_store(source, [10])
    if occupied == "a file":
        dest.write_text("mine")
    else:
        dest.mkdir()
        (dest / "notes.txt").write_text("mine")
    before = file_states(tmp_path)
    done = run_backup(source, dest)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert str(dest) in done.stderr
    assert file_states(tmp_path) == before


def test_an_empty_destination_directory_is_used_and_a_missing_store_is_one_line(tmp_path: Path) -> None:
    source, dest = tmp_path / "store", tmp_path / "backup"
    write_store(source, [5])
    dest.mkdir()
    assert run_backup(source, dest).returncode == 0
    assert read_events(dest) == read_events(source)
    missing = run_backup(tmp_path / "nowhere", tmp_path / "other")
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "nowhere" in missing.stderr
    assert not (tmp_path / "other").exists()
