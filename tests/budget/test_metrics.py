"""The enforcer's Prometheus metrics against what its store holds: an in-process enforcer on a real
mosquitto, its exposition parsed as Prometheus would."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from budget.domain.events import DeadLettered, ReservationDenied, ReservationGranted, UsageRecorded
from budget.service.metrics import EnforcerMetrics
from budget.store.manifest import read_manifest
from tests.budget.broker import Broker
from tests.budget.enforcer_helpers import PATIENCE_S, make_enforcer, stored_events
from tests.budget.metrics_helpers import ARRAY, USAGE_MESSAGES, samples, send_traffic, value


def test_metrics_match_what_the_store_holds(mosquitto: Broker, tmp_path: Path) -> None:
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    log_bytes_on_disk = 0

    async def scenario() -> None:
        nonlocal log_bytes_on_disk
        # No background flush: the whole log stays in wal/, so its size can be checked file by file.
        async with make_enforcer(mosquitto, tmp_path, store_flush_interval_s=None) as enforcer:
            metrics = EnforcerMetrics(enforcer)
            await enforcer.wait_subscribed(PATIENCE_S)
            await send_traffic(enforcer, mosquitto.port)
            scraped.update(samples(metrics))
            log_bytes_on_disk = sum(p.stat().st_size for p in (tmp_path / "store" / "wal").iterdir())
            assert value(scraped, "margins_commits_total") == enforcer.counters["commits"]

    asyncio.run(scenario())
    events = stored_events(tmp_path)
    kinds = Counter(type(e).__name__ for e in events)
    assert value(scraped, "margins_events_committed_total") == len(events)
    assert value(scraped, "margins_store_events") == len(events)
    assert (
        value(scraped, "margins_usage_events_total")
        == kinds[UsageRecorded.__name__]
        == USAGE_MESSAGES + ARRAY
    )
    dead = Counter(e.reason for e in events if isinstance(e, DeadLettered))
    assert dead == {"malformed_json": 1, "not_utf8": 1, "unknown_model": 1}
    for reason, count in dead.items():
        assert value(scraped, "margins_dead_letters_total", reason=reason) == count
    assert (
        value(scraped, "margins_authorizations_total", decision="allow") == kinds[ReservationGranted.__name__]
    )
    assert (
        value(scraped, "margins_authorizations_total", decision="deny") == kinds[ReservationDenied.__name__]
    )
    assert value(scraped, "margins_authorizations_total", decision="degrade") == 0
    # the allowed reservation is neither settled nor expired (the clock stands still)
    assert value(scraped, "margins_reservations_open") == 1
    assert value(scraped, "margins_broker_connects_total") == 1
    assert value(scraped, "margins_store_size_bytes", part="log") == log_bytes_on_disk > 0
    assert value(scraped, "margins_store_size_bytes", part="segments") == 0
    commits = value(scraped, "margins_commits_total")
    assert 1 <= commits <= len(events)
    assert value(scraped, "margins_commit_duration_seconds_count") == commits
    assert value(scraped, "margins_commit_duration_seconds_sum") > 0
    assert value(scraped, "margins_authorize_duration_seconds_count") == 2
    assert value(scraped, "margins_authorize_duration_seconds_bucket", le="+Inf") == 2
    assert value(scraped, "margins_replay_events") == 0  # a new store: nothing to replay
    assert ("margins_snapshot_age_seconds", frozenset()) not in scraped  # no snapshot yet


def test_after_a_restart_store_size_replay_and_snapshot_age(mosquitto: Broker, tmp_path: Path) -> None:
    async def first_run() -> int:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            await send_traffic(enforcer, mosquitto.port)
            return enforcer.counters["committed"]

    committed = asyncio.run(first_run())  # a clean stop flushes segments and snapshots the ledger

    async def second_run() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            return samples(EnforcerMetrics(enforcer))

    scraped = asyncio.run(second_run())
    manifest = read_manifest(tmp_path / "store")
    segment_bytes = sum((tmp_path / "store" / s.file).stat().st_size for s in manifest.segments)
    assert value(scraped, "margins_store_size_bytes", part="segments") == segment_bytes > 0
    assert value(scraped, "margins_store_events") == committed == manifest.last_seq + 1
    assert value(scraped, "margins_events_committed_total") == 0  # counters start again with the process
    assert value(scraped, "margins_replay_events") == 0  # restored from the snapshot the stop wrote
    assert 0 <= value(scraped, "margins_snapshot_age_seconds") < PATIENCE_S
    assert value(scraped, "margins_replay_duration_seconds") > 0
    assert value(scraped, "margins_reservations_open") == 1  # restored with the ledger
