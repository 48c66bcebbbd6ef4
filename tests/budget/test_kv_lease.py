"""The partition lease against a real three-node cluster: one owner at a time, the loser's stale token
refused, takeover after a TTL of missed renewals, and the journal append that a paused old owner cannot
make. Each contender has its own hand-driven monotonic clock, so a TTL passes without sleeping; the
compare-and-set that decides between contenders is the real store's."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError
from nats.js.kv import KeyValue

from budget.errors import LeaseLost
from budget.jetstream.kv_lease import KvLease, open_lease_bucket
from budget.jetstream.lease import LeaseTerms
from budget.jetstream.partitions import LEASE_BUCKET, journal_subject, lease_key, partition_of
from budget.jetstream.streams import ensure_partition_streams
from tests.budget.nats_cluster import NatsCluster

pytestmark = pytest.mark.timeout(120)

TERMS = LeaseTerms(ttl_s=4.0, safety_s=0.5)
LIMIT_S = 60.0  # generous: the waits below end as soon as their condition holds


class Clock:
    """A monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def run_with_bucket(
    cluster: NatsCluster, scenario: Callable[[KeyValue, JetStreamContext], Awaitable[None]]
) -> None:
    async def main() -> None:
        nc = await nats.connect(cluster.urls)
        try:
            js = nc.jetstream()
            await scenario(await open_lease_bucket(js), js)
        finally:
            await nc.close()

    asyncio.run(main())


def test_one_owner_at_a_time_and_the_losers_stale_token_is_refused(nats_cluster: NatsCluster) -> None:
    async def scenario(kv: KeyValue, _js: JetStreamContext) -> None:
        clock_a, clock_b = Clock(), Clock()
        a = KvLease(kv, lease_key(0), "enforcer-a", TERMS, clock_a)
        b = KvLease(kv, lease_key(0), "enforcer-b", TERMS, clock_b)
        held_a = await a.try_acquire()
        assert held_a is not None
        # a renews every second; b keeps looking for ten seconds of its clock and never gets it
        for _ in range(10):
            clock_a.now += TERMS.renew_every_s
            clock_b.now += TERMS.renew_every_s
            held_a = await a.renew(held_a)
            assert await b.try_acquire() is None
        # a stops renewing (paused): a whole TTL later by b's clock, b takes over with a newer token
        assert await b.try_acquire() is None
        clock_b.now += TERMS.ttl_s
        held_b = await b.try_acquire()
        assert held_b is not None and held_b.token > held_a.token
        assert (await kv.get(lease_key(0))).value == b"enforcer-b"
        # a wakes up believing its lease valid (its clock did not move): the store refuses its token
        with pytest.raises(LeaseLost, match="another owner wrote it since") as lost:
            await a.renew(held_a)
        assert lost.value.token == held_a.token
        with pytest.raises(LeaseLost):
            await a.release(held_a)
        assert (await kv.get(lease_key(0))).value == b"enforcer-b"
        assert (await b.renew(held_b)).token > held_b.token

    run_with_bucket(nats_cluster, scenario)


def test_a_lapsed_holder_may_not_commit_but_wins_its_lease_back_if_nobody_took_it(
    nats_cluster: NatsCluster,
) -> None:
    async def scenario(kv: KeyValue, _js: JetStreamContext) -> None:
        clock_a, clock_b = Clock(), Clock()
        a = KvLease(kv, lease_key(1), "enforcer-a", TERMS, clock_a)
        b = KvLease(kv, lease_key(1), "enforcer-b", TERMS, clock_b)
        held = await a.try_acquire()
        assert held is not None and await b.try_acquire() is None
        clock_a.now += TERMS.ttl_s - TERMS.safety_s  # a could not renew for a while
        assert not held.is_valid(clock_a.now, TERMS)  # so its committer stops
        clock_b.now += TERMS.ttl_s / 2  # b has not seen the revision unchanged for a whole TTL yet
        assert await b.try_acquire() is None
        renewed = await a.renew(held)  # nobody wrote since its token: the lease is a's again
        assert renewed.token > held.token and renewed.is_valid(clock_a.now, TERMS)
        clock_b.now += TERMS.ttl_s / 2  # a TTL since b first saw the old revision, but it changed since
        assert await b.try_acquire() is None

    run_with_bucket(nats_cluster, scenario)


def test_two_contenders_racing_for_a_free_lease_get_one_owner(nats_cluster: NatsCluster) -> None:
    async def scenario(kv: KeyValue, _js: JetStreamContext) -> None:
        for partition in range(2, 6):
            contenders = [
                KvLease(kv, lease_key(partition), f"enforcer-{name}", TERMS, Clock()) for name in "ab"
            ]
            results = await asyncio.gather(*(contender.try_acquire() for contender in contenders))
            winners = [held for held in results if held is not None]
            assert len(winners) == 1
            assert (await kv.get(lease_key(partition))).value == winners[0].owner.encode()

    run_with_bucket(nats_cluster, scenario)


def test_a_released_lease_is_taken_at_once(nats_cluster: NatsCluster) -> None:
    async def scenario(kv: KeyValue, _js: JetStreamContext) -> None:
        a = KvLease(kv, lease_key(6), "enforcer-a", TERMS, Clock())
        b = KvLease(kv, lease_key(6), "enforcer-b", TERMS, Clock())
        held_a = await a.try_acquire()
        assert held_a is not None and await b.try_acquire() is None
        await a.release(held_a)
        held_b = await b.try_acquire()  # no TTL to wait: the key is gone
        assert held_b is not None and held_b.token > held_a.token

    run_with_bucket(nats_cluster, scenario)


def test_the_journal_append_refuses_a_paused_old_owner(nats_cluster: NatsCluster) -> None:
    """The commit's fence: each append names the journal's last seq its writer knows; the new owner's first
    append (its LeaseTaken) makes the old owner's next append name a stale seq, and the store refuses it."""

    async def scenario(_kv: KeyValue, js: JetStreamContext) -> None:
        await ensure_partition_streams(js, nats_cluster.partitions)
        subject = journal_subject(0)
        user = next(
            f"u{index}" for index in range(100) if partition_of(f"u{index}", nats_cluster.partitions) == 0
        )

        async def append(body: bytes, last_known: int) -> int:
            ack = await js.publish(
                subject, body, headers={"Nats-Expected-Last-Subject-Sequence": str(last_known)}
            )
            return ack.seq

        old_last = await append(b'{"LeaseTaken": {"owner": "enforcer-a", "token": 1}}', 0)
        old_last = await append(b'{"UsageRecorded": "..."}', old_last)
        # enforcer-a pauses; enforcer-b takes over, restores the journal up to old_last, and appends first
        await js.publish(f"margins.usage.{user}", b"{}")  # input between journal entries changes nothing
        new_last = await append(b'{"LeaseTaken": {"owner": "enforcer-b", "token": 2}}', old_last)
        with pytest.raises(APIError) as refused:
            await append(b'{"UsageRecorded": "from the paused owner"}', old_last)
        assert refused.value.err_code == 10071  # wrong last sequence
        assert await append(b'{"UsageRecorded": "..."}', new_last) > new_last

    run_with_bucket(nats_cluster, scenario)


def test_takeover_in_real_time_comes_one_ttl_after_the_last_renewal(nats_cluster: NatsCluster) -> None:
    terms = LeaseTerms(ttl_s=1.0, safety_s=0.2)

    async def scenario(kv: KeyValue, _js: JetStreamContext) -> None:
        a = KvLease(kv, lease_key(7), "enforcer-a", terms)
        b = KvLease(kv, lease_key(7), "enforcer-b", terms)
        held_a = await a.try_acquire()
        assert held_a is not None
        started = time.monotonic()  # a never renews from here on
        while (held_b := await b.try_acquire()) is None:
            assert time.monotonic() - started < LIMIT_S
            await asyncio.sleep(0.1)
        took = time.monotonic() - started
        print(f"takeover {took:.2f}s after the last renewal (TTL {terms.ttl_s}s, polling every 0.1s)")
        assert took >= terms.ttl_s and held_b.token > held_a.token
        assert not held_a.is_valid(time.monotonic(), terms)  # a had stopped before b took over

    run_with_bucket(nats_cluster, scenario)


def test_a_holder_keeps_its_lease_through_the_loss_of_a_nats_node(nats_cluster: NatsCluster) -> None:
    """SIGKILL the node leading the lease bucket: renewals stall while the bucket elects a leader, then the
    holder renews with its token and nobody else ever held the lease."""
    terms = LeaseTerms()

    async def scenario(kv: KeyValue, js: JetStreamContext) -> None:
        a = KvLease(kv, lease_key(0), "enforcer-a", terms)
        b = KvLease(kv, lease_key(0), "enforcer-b", terms)
        held = await a.try_acquire()
        assert held is not None
        leader = (await js.stream_info(f"KV_{LEASE_BUCKET}")).cluster
        assert leader is not None
        nats_cluster.sigkill(next(node for node in nats_cluster.nodes if node.name == leader.leader))
        longest_gap, last_renewal, renewals = 0.0, time.monotonic(), 0
        started = time.monotonic()
        while renewals < 3:  # three renewals after the stall
            assert time.monotonic() - started < LIMIT_S
            await asyncio.sleep(terms.renew_every_s)
            try:
                held = await asyncio.wait_for(a.renew(held), timeout=terms.renew_every_s)
            except (TimeoutError, NatsTimeout, NoRespondersError, NoStreamResponseError):
                continue
            longest_gap = max(longest_gap, time.monotonic() - last_renewal)
            last_renewal, renewals = time.monotonic(), renewals + 1
            with contextlib.suppress(TimeoutError, NatsTimeout, NoRespondersError, NoStreamResponseError):
                assert await asyncio.wait_for(b.try_acquire(), timeout=terms.renew_every_s) is None
        print(f"longest gap between renewals around the node's loss: {longest_gap:.2f}s (TTL {terms.ttl_s}s)")
        assert (await kv.get(lease_key(0))).value == b"enforcer-a"

    run_with_bucket(nats_cluster, scenario)
