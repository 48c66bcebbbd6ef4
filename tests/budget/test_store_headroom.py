"""Disk headroom: below the minimum the store refuses to write, with one line, before anything is
acknowledged -- and the enforcer stops instead of dying halfway through a segment."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from budget.domain.events import encode_event
from budget.errors import StoreError
from budget.mqtt.broker import BrokerSettings
from budget.service.enforcer import Enforcer
from budget.service.settings import load_config
from budget.store.event_store import EventStore
from budget.store.headroom import MIB, size_text
from budget.store.manifest import read_manifest
from tests.budget.broker import Broker
from tests.budget.enforcer_process import CAPS_TOML
from tests.budget.mqtt_helpers import mqtt, usage_body
from tests.budget.store_helpers import replayed, usage_events, write_store

MARGINS = Path(sys.executable).with_name("margins")
MINIMUM = 64 * MIB


@pytest.fixture
def free(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The free bytes the store sees (a one-item list to change it), instead of the filesystem's."""
    space = [10 * MINIMUM]
    monkeypatch.setattr("budget.store.headroom.free_bytes", lambda path: space[0])
    return space


def _open(root: Path) -> EventStore:
    return EventStore.open(root, flush_interval=None, offload=False, min_free_bytes=MINIMUM)


def test_an_append_that_would_go_below_the_minimum_writes_nothing(tmp_path: Path, free: list[int]) -> None:
    root = tmp_path / "s"
    with _open(root) as store:
        store.append(usage_events(3))
        [wal] = (root / "wal").glob("*.jsonl")
        size = wal.stat().st_size
        free[0] = MINIMUM + 100  # less than the next batch needs
        with pytest.raises(StoreError) as refused:
            store.append(usage_events(3, start=3))
        batch = b"".join(encode_event(event) + b"\n" for event in usage_events(3, start=3))
        assert str(refused.value) == (
            f"event store {root}: 64.0 MiB free on its filesystem; appending to the log "
            f"({size_text(len(batch))}) would leave less than the minimum of 64.0 MiB (--min-free-mb): "
            "stopped before the disk is full -- free some space (or lower the minimum) and start again"
        )
        assert wal.stat().st_size == size and store.last_seq == 2  # nothing written, nothing counted
        free[0] = 10 * MINIMUM
        store.append(usage_events(3, start=3))
    assert replayed(root) == usage_events(6)


def test_a_flush_or_compaction_below_the_minimum_keeps_every_event_in_the_log(
    tmp_path: Path, free: list[int]
) -> None:
    root = tmp_path / "s"
    events = write_store(root, [5, 5, 5])
    with _open(root) as store:
        store.append(usage_events(4, start=15))
        before = read_manifest(root)
        free[0] = MINIMUM
        with pytest.raises(StoreError, match="writing segments"):
            store.flush()
        with pytest.raises(StoreError, match="compacting segments"):
            store.compact(min_segments=2)
        assert read_manifest(root) == before
        free[0] = 10 * MINIMUM
    assert replayed(root) == events + usage_events(4, start=15)


def test_a_store_below_the_minimum_does_not_open(tmp_path: Path, free: list[int]) -> None:
    free[0] = MINIMUM - 1
    with pytest.raises(StoreError, match="opening the store"):
        _open(tmp_path / "s")


def test_margins_enforce_stops_with_one_line_below_min_free_mb(tmp_path: Path) -> None:
    caps = tmp_path / "caps.toml"
    caps.write_text(CAPS_TOML)
    argv = [
        str(MARGINS), "enforce", "--broker", "mqtt://127.0.0.1:1", "--store", str(tmp_path / "s"),
        "--config", str(caps), "--min-free-mb", str(2**40),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"margins enforce: event store {tmp_path / 's'}: ")
    assert "would leave less than the minimum of 1,099,511,627,776.0 MiB (--min-free-mb)" in line


def test_the_enforcer_stops_before_the_disk_is_full_and_acknowledges_nothing_unwritten(
    mosquitto: Broker, tmp_path: Path, free: list[int]
) -> None:
    (tmp_path / "caps.toml").write_text(CAPS_TOML)
    config = load_config(tmp_path / "caps.toml")
    settings = BrokerSettings(host="127.0.0.1", port=mosquitto.port, client_id="enf-headroom")

    def enforcer() -> Enforcer:
        return Enforcer(settings, tmp_path / "store", config, min_free_bytes=MINIMUM)

    async def scenario() -> None:
        with pytest.raises(StoreError, match="appending to the log"):
            async with enforcer() as running:
                await running.wait_subscribed()
                free[0] = MINIMUM  # the disk filled up meanwhile
                async with mqtt(mosquitto.port) as app:
                    await app.publish("margins/usage/alice", json.dumps(usage_body("full-1")).encode(), qos=1)
                    await asyncio.wait_for(running.wait(), 10)
        free[0] = 10 * MINIMUM  # space again: the broker still holds the unacknowledged message
        async with enforcer() as running:
            await running.wait_subscribed()
            async with asyncio.timeout(10):
                while not running.counters["committed"]:
                    await asyncio.sleep(0.02)

    asyncio.run(scenario())
    assert [getattr(e, "event_id", None) for e in replayed(tmp_path / "store")] == ["full-1"]
