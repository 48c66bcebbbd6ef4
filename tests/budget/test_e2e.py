"""End to end: `margins enforce` as a real process on a real mosquitto.

No overspend under 200 concurrent authorizations; nothing lost and nothing counted twice when the enforcer
is SIGKILLed mid-stream or the broker restarts; an application cannot change a cap; bad flags exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
from click.testing import CliRunner

from budget.client import BudgetClient
from budget.domain.catalog import default_catalog
from budget.domain.events import DeadLettered, ReservationGranted, UsageRecorded, UserConfigured
from budget.domain.ledger import Ledger
from budget.errors import BudgetDenied
from budget.service.settings import load_config
from sim.cli import main as margins
from tests.budget.broker import PASSWORDS, Broker
from tests.budget.enforcer_process import EnforcerProcess
from tests.budget.mqtt_helpers import Collector, mqtt, usage_body, wait_for_status
from tests.budget.store_helpers import replayed

MODELS = ("gpt-4o-mini", "gpt-4.1-nano", "gpt-5-mini")


def spent_by_user(events: Sequence[object]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for event in events:
        if isinstance(event, UsageRecorded):
            totals[event.user_id] += event.cost_nanos
    return dict(totals)


async def publish_reliably(
    port: int, messages: list[tuple[str, bytes]], pace_s: float = 0.0, window: int = 50
) -> None:
    """Every message PUBACKed at least once, whatever happens to the broker: a window that fails is
    re-sent whole on a new connection (duplicates are the enforcer's problem, and it handles them)."""
    done = 0
    async with asyncio.timeout(300):
        while done < len(messages):
            try:
                async with mqtt(port, v5=False) as client:
                    while done < len(messages):
                        chunk = messages[done : done + window]
                        await asyncio.gather(*(client.publish(t, p, qos=1, timeout=2) for t, p in chunk))
                        done += len(chunk)
                        if pace_s:
                            await asyncio.sleep(pace_s)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)


def test_200_concurrent_authorizations_never_exceed_the_cap(enforcer_process: EnforcerProcess) -> None:
    enforcer_process.start()
    port = enforcer_process.broker.port
    worst = 1000 * 150 + 1000 * 600  # gpt-4o-mini, 1000 tokens in and out, in nano-dollars
    now = datetime.now(UTC).isoformat()
    # $0.95 of the $1.00 cap already spent: 100 calls of gpt-4o at 3800 in / 0 out = $0.0095 each
    spend = [
        usage_body(f"pre{i}", user="carol", model="gpt-4o", input_tokens=3_800, output_tokens=0, ts=now)
        for i in range(100)
    ]

    async def scenario() -> tuple[int, int]:
        async with mqtt(port) as pub:
            await pub.publish("margins/usage/carol", json.dumps(spend).encode(), qos=1)
        await wait_for_status(port, {"carol": 950_000_000})
        async with BudgetClient.connect(f"mqtt://127.0.0.1:{port}", timeout_s=15) as budget:
            results = await asyncio.gather(
                *(budget.authorize("carol", "gpt-4o-mini", 1000, 1000) for _ in range(200)),
                return_exceptions=True,
            )
        granted = sum(1 for r in results if not isinstance(r, BaseException))
        denied = sum(1 for r in results if isinstance(r, BudgetDenied))
        return granted, denied

    granted, denied = asyncio.run(scenario())
    assert granted == 50_000_000 // worst  # exactly what fits, no more
    assert granted + denied == 200
    assert enforcer_process.terminate() == 0
    events = replayed(enforcer_process.store)
    reserved = sum(e.amount_nanos for e in events if isinstance(e, ReservationGranted))
    assert spent_by_user(events)["carol"] + reserved <= 1_000_000_000


def test_sigkill_at_random_moments_loses_nothing_and_counts_nothing_twice(
    enforcer_process: EnforcerProcess,
) -> None:
    rng = random.Random(20261126)
    prices = default_catalog()
    now = datetime.now(UTC).isoformat()
    messages: list[tuple[str, bytes]] = []
    expected: Counter[str] = Counter()
    ids: set[str] = set()
    for i in range(3000):
        user = f"u{i % 5}"
        model = MODELS[i % 3]
        tokens = (rng.randint(10, 5000), rng.randint(1, 2000))
        body = usage_body(
            f"k{i}", user=user, model=model, input_tokens=tokens[0], output_tokens=tokens[1], ts=now
        )
        expected[user] += prices.cost_nanos(model, tokens[0], tokens[1])
        ids.add(body["event_id"])
        messages.append((f"margins/usage/{user}", json.dumps(body).encode()))
        if i % 10 == 0:  # an application that re-sends some reports
            messages.append(messages[rng.randrange(len(messages))])
    enforcer_process.extra += ["--snapshot-every", "40"]  # kills land before, during and after snapshots
    enforcer_process.start()

    async def scenario() -> None:
        publishing = asyncio.create_task(
            publish_reliably(enforcer_process.broker.port, messages, pace_s=0.02)
        )
        for _ in range(3):
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            enforcer_process.kill()  # SIGKILL: no flush, no goodbye
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await asyncio.to_thread(enforcer_process.start)
        await publishing
        await wait_for_status(enforcer_process.broker.port, dict(expected))

    asyncio.run(scenario())
    assert enforcer_process.terminate() == 0
    events = replayed(enforcer_process.store)
    usage_ids = [e.event_id for e in events if isinstance(e, UsageRecorded)]
    assert len(usage_ids) == len(set(usage_ids)) == len(ids)  # nothing twice in the store
    assert set(usage_ids) == ids  # nothing lost
    assert spent_by_user(events) == dict(expected)
    config = load_config(enforcer_process.config)
    rebuilt = Ledger(config, config.catalog())
    rebuilt.apply_all(events)
    month = datetime.now(UTC).strftime("%Y-%m")
    assert {u: rebuilt.spent(u, month)[0] for u in expected} == dict(expected)


def _last_start(log: Path) -> tuple[int | None, int]:
    """(the snapshot seq the newest start restored, or None; how many events it replayed after it)."""
    text = log.read_text(errors="replace")
    restored = re.findall(r"restored the ledger from its snapshot at seq (\d+)", text)
    counts = re.findall(r"replayed (\d+) events", text)
    start = text.rsplit("replayed ", 1)[0]
    from_snapshot = restored and start.rfind("restored the ledger") > start.rfind("enforcer ready")
    return (int(restored[-1]) if from_snapshot else None), int(counts[-1])


def test_a_restart_restores_the_newest_snapshot_and_replays_only_what_came_after(
    enforcer_process: EnforcerProcess,
) -> None:
    prices = default_catalog()
    now = datetime.now(UTC).isoformat()
    bodies = [usage_body(f"s{i}", user=f"u{i % 4}", ts=now, input_tokens=100 + i) for i in range(450)]
    expected: Counter[str] = Counter()
    for body in bodies:
        expected[body["user_id"]] += prices.cost_nanos(body["model"], body["input_tokens"], 250)
    messages = [(f"margins/usage/{b['user_id']}", json.dumps(b).encode()) for b in bodies]
    enforcer_process.extra += ["--snapshot-every", "100"]
    port, log = enforcer_process.broker.port, enforcer_process.log
    enforcer_process.start()
    assert _last_start(log) == (None, 0)
    asyncio.run(publish_reliably(port, messages[:300]))
    assert enforcer_process.terminate() == 0  # a clean stop snapshots what it holds
    enforcer_process.start()
    after_stop = _last_start(log)
    assert after_stop[0] is not None and after_stop[1] == 0
    written = log.read_text().count("snapshot at seq")
    asyncio.run(publish_reliably(port, messages[300:420]))  # 120 events: one snapshot while running
    deadline = time.monotonic() + 120  # it is written in a thread of its own
    while log.read_text().count("snapshot at seq") == written:
        assert time.monotonic() < deadline, "no snapshot written after 120 more events"
        time.sleep(0.02)
    asyncio.run(publish_reliably(port, messages[420:]))  # 30 more, fewer than a snapshot takes
    asyncio.run(wait_for_status(port, dict(expected)))  # everything committed
    enforcer_process.kill()  # SIGKILL: no snapshot at the stop
    stored_count = len(replayed(enforcer_process.store))
    enforcer_process.start()
    snapshot_seq, after_snapshot = _last_start(log)
    newest = int(re.findall(r"snapshot at seq (\d+)", log.read_text())[-1])
    assert snapshot_seq == newest > after_stop[0]  # the running snapshot, not the one of the stop
    assert snapshot_seq + 1 + after_snapshot == stored_count and after_snapshot >= 30  # it covers the rest
    asyncio.run(wait_for_status(port, dict(expected)))  # the restored ledger's statuses, to the nano-dollar
    assert enforcer_process.terminate() == 0


def test_a_broker_restart_mid_stream_loses_nothing(enforcer_process: EnforcerProcess) -> None:
    now = datetime.now(UTC).isoformat()
    bodies = [usage_body(f"b{i}", user="dora", ts=now) for i in range(2000)]
    messages = [("margins/usage/dora", json.dumps(b).encode()) for b in bodies]
    enforcer_process.start()
    broker: Broker = enforcer_process.broker

    async def scenario() -> None:
        publishing = asyncio.create_task(publish_reliably(broker.port, messages, pace_s=0.02))
        await asyncio.sleep(0.8)
        await asyncio.to_thread(broker.stop)  # SIGTERM: mosquitto saves its sessions
        await asyncio.sleep(1.0)  # down long enough for the enforcer to find nobody listening
        await asyncio.to_thread(broker.start)
        await publishing
        await wait_for_status(broker.port, {"dora": 2000 * 285_000})

    asyncio.run(scenario())
    assert enforcer_process.terminate() == 0
    events = replayed(enforcer_process.store)
    ids = [e.event_id for e in events if isinstance(e, UsageRecorded)]
    assert len(ids) == len(set(ids)) == 2000
    log = enforcer_process.log.read_text().splitlines()
    retries = [line for line in log if "retrying" in line]
    assert retries and " WARNING " in retries[0]  # the first failure warns; the attempts after it inform
    assert all(" INFO " in line for line in retries[1:])
    assert [line for line in log if " ERROR " in line or "Traceback" in line] == []


def test_an_application_cannot_change_a_cap_or_forge_status(
    secured_mosquitto: Broker, tmp_path: Path, caps_file: Path
) -> None:
    enforcer = EnforcerProcess(secured_mosquitto, tmp_path / "store", caps_file, tmp_path / "enforcer.log")
    enforcer.start()
    port = secured_mosquitto.port
    try:

        async def scenario() -> list[dict[str, object]]:
            # One connection per credential: the broker makes the username the client id, so a second
            # "admin" connection would take the first one's session over.
            async with mqtt(port, "admin", PASSWORDS["admin"]) as admin:
                seen = await Collector(admin).start("margins/status/alice")
                for topic, retain in (("margins/admin/users/alice", False), ("margins/status/alice", True)):
                    # MQTT 3.1.1: the broker acknowledges and drops; MQTT 5: it refuses (and may disconnect)
                    for v5 in (False, True):
                        with contextlib.suppress(aiomqtt.MqttError):
                            async with mqtt(port, "app", PASSWORDS["app"], v5=v5) as app:
                                await app.publish(topic, b'{"cap_usd": 1000}', qos=1, retain=retain)
                async with mqtt(port, "app", PASSWORDS["app"], v5=False) as app:  # what an app may do, it can
                    body = usage_body("acl-ok", ts=datetime.now(UTC).isoformat())
                    await app.publish("margins/usage/alice", json.dumps(body).encode(), qos=1)
                async with (
                    BudgetClient.connect(  # and its replies reach it under margins/replies/<client id>/
                        f"mqtt://127.0.0.1:{port}", username="app", password=PASSWORDS["app"], timeout_s=30
                    ) as budget
                ):
                    grant = await budget.authorize("alice", "gpt-4o-mini", 100, 100)
                    assert grant.decision == "allow"
                await admin.publish("margins/admin/users/alice", b'{"cap_usd": 2}', qos=1)
                await seen.wait_for(lambda: any(s["cap_usd"] == 2.0 for s in seen.on("margins/status/alice")))
                await asyncio.sleep(0.3)
                seen.stop()
                return seen.on("margins/status/alice")

        statuses = asyncio.run(scenario())
        assert 1000 not in {s["cap_usd"] for s in statuses}
        assert statuses[-1]["cap_usd"] == 2.0
    finally:
        assert enforcer.terminate() == 0
    events = replayed(tmp_path / "store")
    configured = [e for e in events if isinstance(e, UserConfigured)]
    assert [(e.user_id, e.cap_nanos) for e in configured] == [("alice", 2_000_000_000)]
    assert [e.event_id for e in events if isinstance(e, UsageRecorded)] == ["acl-ok"]


def test_sigterm_stops_cleanly_and_bad_flags_exit_2(
    enforcer_process: EnforcerProcess, tmp_path: Path
) -> None:
    enforcer_process.start()

    async def send() -> None:
        async with mqtt(enforcer_process.broker.port) as pub:
            await pub.publish("margins/usage/eve", b"{broken", qos=1)
            await asyncio.sleep(0.3)

    asyncio.run(send())
    assert enforcer_process.terminate() == 0
    log = enforcer_process.log.read_text()
    assert "enforcer stopped" in log and "dead_letter_malformed_json=1" in log
    assert [e.reason for e in replayed(enforcer_process.store) if isinstance(e, DeadLettered)] == [
        "malformed_json"
    ]

    runner = CliRunner()
    store, caps = str(tmp_path / "s"), str(enforcer_process.config)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("default_cap_usd = \n")
    for args in (
        ["enforce", "--broker", "http://x", "--store", store, "--config", caps],
        [
            "enforce",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--store",
            store,
            "--config",
            str(tmp_path / "missing.toml"),
        ],
        ["enforce", "--broker", "mqtt://127.0.0.1:1", "--store", store, "--config", str(bad_toml)],
        [
            "enforce",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--store",
            store,
            "--config",
            caps,
            "--password-file",
            "/nope",
        ],
        ["enforce", "--store", store, "--config", caps],
    ):
        result = runner.invoke(margins, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
        assert result.output.strip().splitlines()[-1].startswith("Error:")
