"""The partitioned enforcer end to end: `margins enforce --nats` as real processes on three real
nats-server nodes. Usage is decided in the partition the server's mapping names; when an enforcer is
SIGKILLed, or one NATS node of three, or an enforcer is paused past its lease, another takes its
partitions over -- and nothing is lost, nothing counted twice, no cap exceeded."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from nats.js import JetStreamContext

from budget.domain.catalog import default_catalog
from budget.domain.events import Event, ReservationGranted, UsageRecorded
from budget.jetstream.partitions import partition_of
from budget.partitioned.owner import partition_store
from sim.cli import main as margins
from tests.budget.mqtt_helpers import mqtt, usage_body
from tests.budget.nats_cluster import NatsCluster
from tests.budget.partitioned_helpers import (
    PartitionedProcess,
    authorize,
    authorize_until_answered,
    connected,
    publish_all,
    publish_and_decide,
    stored_events,
    usage_messages,
    user_in,
    wait_for_owners,
    wait_until_decided,
    wait_until_held_by,
)
from tests.budget.store_helpers import replayed

pytestmark = pytest.mark.timeout(300)

REPLY_LIMIT_S = 60.0


def check_exact(events: list[Event], expected: Counter[str]) -> None:
    """Every usage event once, in the partition of its user, each user's spend to the nano-dollar."""
    usage = [e for e in events if isinstance(e, UsageRecorded)]
    ids = [e.event_id for e in usage]
    assert len(ids) == len(set(ids)), "an event counted twice"
    spent: Counter[str] = Counter()
    for event in usage:
        spent[event.user_id] += event.cost_nanos
    assert spent == expected


def test_one_enforcer_decides_every_partition_exactly(
    nats_cluster: NatsCluster, tmp_path: Path, caps_file: Path
) -> None:
    enforcer = PartitionedProcess(nats_cluster, tmp_path / "store", caps_file, "alpha")
    messages, expected = usage_messages(400, seed=1)
    partitions = nats_cluster.partitions
    try:
        enforcer.start()

        async def scenario() -> list[dict[str, object]]:
            async with connected(nats_cluster) as (nc, js):
                await wait_for_owners(js, partitions, lambda owners: set(owners.values()) == {"alpha"})
                await publish_all(js, messages)
                return [
                    await authorize(nc, js, user_in(p, partitions), f"r{p}", (100, 100), REPLY_LIMIT_S)
                    for p in range(partitions)
                ]

        replies = asyncio.run(scenario())
        assert [reply["decision"] for reply in replies] == ["allow"] * partitions
        assert enforcer.terminate() == 0
    finally:
        enforcer.kill()
    events = stored_events(enforcer.store, partitions)
    check_exact(events, expected)
    for partition in range(partitions):  # each partition's store holds its own users' usage only
        users = {
            e.user_id
            for e in replayed(partition_store(enforcer.store, partition))
            if isinstance(e, UsageRecorded)
        }
        assert users and {partition_of(user, partitions) for user in users} == {partition}
    granted = [e for e in events if isinstance(e, ReservationGranted)]
    assert len(granted) == partitions


CAP_NANOS = 1_000_000_000  # caps.toml's default cap, $1.00
WORST_NANOS = 1000 * 150 + 1000 * 600  # gpt-4o-mini, 1000 tokens in and out
TAKEOVER_LIMIT_S = 60.0  # generous for a busy machine; the figures measured are in the README


def prespend_carol(expected: Counter[str]) -> list[tuple[str, bytes, str]]:
    """$0.95 of carol's $1.00: 100 calls of gpt-4o at 3800 tokens in, none out."""
    now = datetime.now(UTC).isoformat()
    body = [
        usage_body(f"pre{i}", user="carol", model="gpt-4o", input_tokens=3_800, output_tokens=0, ts=now)
        for i in range(100)
    ]
    expected["carol"] += 950_000_000
    return [("margins.usage.carol", json.dumps(body).encode(), "prespend")]


async def through_a_failover(
    cluster: NatsCluster,
    messages: list[tuple[str, bytes, str]],
    disrupt: Callable[[], object],
    then: Callable[[JetStreamContext], Awaitable[None]] | None = None,
) -> tuple[float, list[dict[str, object]]]:
    """Publish `messages` while `disrupt()` strikes (and `then` follows it) and 100 authorizations for
    carol race it; the seconds from the strike until every partition answers again, and carol's replies."""
    partitions = cluster.partitions
    async with connected(cluster) as (nc, js):
        publishing = asyncio.create_task(publish_all(js, messages, pace_s=0.02))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(disrupt)
        struck = time.monotonic()
        if then is not None:
            await then(js)
        carol = asyncio.gather(
            *(authorize_until_answered(nc, js, "carol", f"c{i}", (1000, 1000)) for i in range(100))
        )
        await asyncio.gather(
            *(
                authorize_until_answered(nc, js, user_in(p, partitions), f"t{p}", (10, 10))
                for p in range(partitions)
            )
        )
        answered_s = time.monotonic() - struck
        replies = await carol
        await publishing
        await wait_until_decided(js, partitions)
    return answered_s, replies


def check_caps(events: list[Event], replies: list[dict[str, object]]) -> None:
    """Exactly what fits carol's cap was granted, and the store agrees: spent + held <= cap."""
    granted = sum(1 for reply in replies if reply["decision"] == "allow")
    assert granted == 50_000_000 // WORST_NANOS
    assert len(replies) == 100
    held = sum(e.amount_nanos for e in events if isinstance(e, ReservationGranted) and e.user_id == "carol")
    spent = sum(e.cost_nanos for e in events if isinstance(e, UsageRecorded) and e.user_id == "carol")
    assert spent + held <= CAP_NANOS


def test_a_sigkilled_enforcers_partitions_are_taken_over_and_nothing_is_lost_or_doubled(
    nats_cluster: NatsCluster, tmp_path: Path, caps_file: Path
) -> None:
    partitions = nats_cluster.partitions
    alpha = PartitionedProcess(nats_cluster, tmp_path / "store", caps_file, "alpha")
    beta = PartitionedProcess(nats_cluster, tmp_path / "store", caps_file, "beta")
    messages, expected = usage_messages(1200, seed=2)
    try:
        alpha.start()
        wait_until_held_by(nats_cluster, "alpha")
        publish_and_decide(nats_cluster, prespend_carol(expected))
        beta.start()  # alpha gives it the partitions beyond its share; alpha still holds the rest when killed
        answered_s, replies = asyncio.run(through_a_failover(nats_cluster, messages, alpha.kill))
        wait_until_held_by(nats_cluster, "beta")
        assert beta.terminate() == 0
    finally:
        alpha.kill()
        beta.kill()
    print(f"every partition answered again {answered_s:.2f} s after the SIGKILL")
    assert answered_s < TAKEOVER_LIMIT_S
    # alpha counted dead at the takeover: beta keeps all it took (no share still counting alpha)
    assert "giving it up to balance" not in beta.log.read_text()
    events = stored_events(tmp_path / "store", partitions)
    check_exact(events, expected)
    check_caps(events, replies)
    # `margins spend` over the enforcers' store root: one view over every partition's segments
    month = datetime.now(UTC).strftime("%Y-%m")
    args = ["spend", "--store", str(tmp_path / "store"), "--month", month, "--top", "100", "--format", "json"]
    result = CliRunner().invoke(margins, args)
    assert result.exit_code == 0, result.output
    assert {row["user_id"]: row["spent_nanos"] for row in json.loads(result.stdout)} == dict(expected)


def test_the_loss_of_one_nats_node_of_three_loses_nothing_and_doubles_nothing(
    nats_cluster: NatsCluster, tmp_path: Path, caps_file: Path
) -> None:
    partitions = nats_cluster.partitions
    alpha = PartitionedProcess(nats_cluster, tmp_path / "store", caps_file, "alpha")
    messages, expected = usage_messages(1200, seed=3)
    try:
        alpha.start()
        wait_until_held_by(nats_cluster, "alpha")
        publish_and_decide(nats_cluster, prespend_carol(expected))
        victim = nats_cluster.busiest_node()
        answered_s, replies = asyncio.run(
            through_a_failover(nats_cluster, messages, lambda: nats_cluster.sigkill(victim))
        )
        assert alpha.terminate() == 0
    finally:
        alpha.kill()
    print(f"every partition answered again {answered_s:.2f} s after the SIGKILL of NATS node {victim.name}")
    assert answered_s < TAKEOVER_LIMIT_S
    events = stored_events(tmp_path / "store", partitions)
    check_exact(events, expected)
    check_caps(events, replies)


def test_a_paused_enforcer_is_fenced_out_and_its_successor_counts_exactly(
    nats_cluster: NatsCluster, tmp_path: Path, caps_file: Path
) -> None:
    """SIGSTOP past the lease (a GC pause, a stopped VM): beta takes the leases and fences the journal;
    alpha, woken, finds its lease gone, decides nothing more and lets go of the partitions' stores, which
    beta then opens. (While alpha sleeps it still holds their store locks: README, "Scaling out".)"""
    partitions = nats_cluster.partitions
    alpha = PartitionedProcess(nats_cluster, tmp_path / "store", caps_file, "alpha")
    beta = PartitionedProcess(nats_cluster, tmp_path / "store", caps_file, "beta")
    messages, expected = usage_messages(1200, seed=4)

    async def wake_alpha_once_beta_holds_every_lease(js: JetStreamContext) -> None:
        await wait_for_owners(js, partitions, lambda owners: set(owners.values()) == {"beta"})
        alpha.signal(signal.SIGCONT)

    try:
        alpha.start()
        wait_until_held_by(nats_cluster, "alpha")
        publish_and_decide(nats_cluster, prespend_carol(expected))
        beta.start()
        answered_s, replies = asyncio.run(
            through_a_failover(
                nats_cluster,
                messages,
                lambda: alpha.signal(signal.SIGSTOP),
                wake_alpha_once_beta_holds_every_lease,
            )
        )
        assert alpha.terminate() == 0
        assert beta.terminate() == 0
    finally:
        if alpha.proc is not None:
            alpha.signal(signal.SIGCONT)
        alpha.kill()
        beta.kill()
    print(f"every partition answered again {answered_s:.2f} s after the SIGSTOP")
    assert "is no longer decided here" in alpha.log.read_text()
    events = stored_events(tmp_path / "store", partitions)
    check_exact(events, expected)
    check_caps(events, replies)


def test_an_mqtt_application_is_decided_through_the_cluster(
    nats_cluster: NatsCluster, tmp_path: Path, caps_file: Path
) -> None:
    """An application on one node's MQTT listener (3.1.1, QoS 1) reports usage and asks for an
    authorization as it would of mosquitto (its reply topic in the payload); the reply and the user's status
    come back to it over MQTT."""
    enforcer = PartitionedProcess(nats_cluster, tmp_path / "store", caps_file, "alpha")
    prices = default_catalog()
    now = datetime.now(UTC).isoformat()
    bodies = [usage_body(f"m{i}", user="alice", input_tokens=1000 + i, ts=now) for i in range(5)]
    expected = sum(prices.cost_nanos("gpt-4o-mini", 1000 + i, 250) for i in range(5))
    request = {
        "request_id": "q1",
        "user_id": "alice",
        "model": "gpt-4o-mini",
        "max_input_tokens": 100,
        "max_output_tokens": 100,
        "reply_to": "margins/replies/app1",
    }
    try:
        enforcer.start()

        async def scenario() -> tuple[dict[str, object], dict[str, object]]:
            async with connected(nats_cluster) as (_nc, js):
                await wait_for_owners(
                    js, nats_cluster.partitions, lambda owners: set(owners.values()) == {"alpha"}
                )
            async with mqtt(nats_cluster.nodes[1].mqtt_port, v5=False) as app:
                await app.subscribe("margins/replies/app1", qos=1)
                await app.subscribe("margins/status/alice", qos=1)
                for body in bodies:
                    await app.publish("margins/usage/alice", json.dumps(body), qos=1)
                await app.publish("margins/authorize/alice", json.dumps(request), qos=1)
                reply: dict[str, object] | None = None
                status: dict[str, object] = {}
                async with asyncio.timeout(REPLY_LIMIT_S):
                    async for message in app.messages:
                        data = json.loads(bytes(message.payload))
                        if message.topic.matches("margins/replies/app1"):
                            reply = data
                        else:
                            status = data
                        spent = status.get("spent_usd")
                        if reply is not None and isinstance(spent, float) and round(spent * 1e9) == expected:
                            return reply, status
            raise AssertionError("unreachable")

        reply, status = asyncio.run(scenario())
        assert enforcer.terminate() == 0
    finally:
        enforcer.kill()
    assert reply["request_id"] == "q1" and reply["decision"] == "allow"
    assert status["user_id"] == "alice"


def test_a_second_enforcer_gets_half_the_partitions_and_nothing_is_lost_in_the_handover(
    nats_cluster: NatsCluster, tmp_path: Path, caps_file: Path
) -> None:
    """alpha holds every partition; beta joins while usage flows; alpha gives up the partitions beyond its
    share (commit, snapshot, release) and beta takes them: two each, every report counted once."""
    partitions = nats_cluster.partitions
    alpha = PartitionedProcess(nats_cluster, tmp_path / "store", caps_file, "alpha")
    beta = PartitionedProcess(nats_cluster, tmp_path / "store", caps_file, "beta")
    messages, expected = usage_messages(1200, seed=5)

    async def two_each(js: JetStreamContext) -> None:
        await wait_for_owners(
            js,
            partitions,
            lambda owners: Counter(owners.values()) == {"alpha": 2, "beta": 2},
        )

    try:
        alpha.start()
        wait_until_held_by(nats_cluster, "alpha")

        async def scenario() -> None:
            async with connected(nats_cluster) as (_nc, js):
                publishing = asyncio.create_task(publish_all(js, messages, pace_s=0.02))
                await asyncio.sleep(1.0)
                await asyncio.to_thread(beta.start)
                await two_each(js)
                await publishing
                await wait_until_decided(js, partitions)
                await two_each(js)  # and it stays so

        asyncio.run(scenario())
        assert alpha.terminate() == 0
        assert beta.terminate() == 0
    finally:
        alpha.kill()
        beta.kill()
    assert alpha.log.read_text().count("giving it up to balance") == 2
    check_exact(stored_events(tmp_path / "store", partitions), expected)
