"""One partition this enforcer holds the lease of: taking it over, deciding its messages, giving it up.

Taking over, in this order (README, "Scaling out"):
1. fence: append a LeaseTaken mark to the partition's journal, naming the journal's last seq -- from here
   on a paused old owner's next append is refused, so nothing it decides can land after what we read;
2. open the partition's event store (`STORE/partition=<p>`; a paused old owner still holds its lock, and
   lets go once its refused append stops it), restore its ledger (snapshot + log), and append to store
   and ledger whatever the journal holds beyond it (what an owner journaled and died before storing);
3. replace the partition's input consumer: messages the old owner took but never acknowledged come to
   us at once instead of after the acknowledgement wait.

Deciding is the single-broker enforcer's path with NATS at both ends: a message from the input stream
goes to the same MessageHandler under the MQTT topic it stands for; a batch is committed by appending its
events to the journal (fenced) and then to the store; only then are its messages acknowledged, its
authorizations answered and its users' status published (on NATS subjects an MQTT subscriber of the
matching topic receives).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from budget.domain.config import EnforcerConfig
from budget.domain.events import encode_event
from budget.domain.ledger import Ledger
from budget.domain.prices import PriceCatalog
from budget.errors import JournalError, LeaseLost, StoreError
from budget.jetstream.journal import TRANSIENT, Journal
from budget.jetstream.journal_codec import chunks, lease_taken
from budget.jetstream.kv_lease import KvLease
from budget.jetstream.lease import Held
from budget.jetstream.partitions import partition_subjects, stream_name, subject_of_topic, topic_of_subject
from budget.mqtt.packets import Publish
from budget.mqtt.topics import status_topic
from budget.service.handler import Batch, MessageHandler
from budget.service.messages import confirm_json, status_json
from budget.service.snapshots import SnapshotTaker, restore, settings_key
from budget.service.throttle import LogThrottle
from budget.service.wire import DEFAULT_MAX_SKEW
from budget.store.event_store import HELD_ELSEWHERE, EventStore

log = logging.getLogger("margins.enforce")

FETCH_BATCH = 512  # input messages asked for at a time
FETCH_WAIT_S = 0.5  # how long a fetch waits for the first of them
ACK_WAIT_S = 30.0  # a message not acknowledged this long after delivery is delivered again
MAX_ACK_PENDING = 20_000  # taken and not yet acknowledged: bounds the batch during a stalled commit
INLINE_COMMIT_MAX = 32  # events a commit appends to the store without leaving the event loop
STORE_RETRY_S = 0.2


class Phases:
    """How long each phase of a takeover took, for its log line."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self._phases: list[str] = []

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self._phases.append(f"{phase} {now - self._last:.2f}")
        self._last = now

    @property
    def seconds(self) -> float:
        """From the first phase's start to the last one's end."""
        return self._last - self._start

    def __str__(self) -> str:
        return f"{self.seconds:.2f} s ({', '.join(self._phases)})"


def partition_store(root: Path, partition: int) -> Path:
    """The event store directory of one partition under the enforcers' shared store root."""
    return root / f"partition={partition}"


class PartitionOwner:
    """The decisions of one partition, while this process holds its lease (`held`, from `lease`)."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        lease: KvLease,
        held: Held,
        partition: int,
        store_root: Path,
        config: EnforcerConfig,
        prices: PriceCatalog,
        *,
        snapshot_every_events: int,
        expiry_interval_s: float = 0.5,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.partition = partition
        self.counters: Counter[str] = Counter()
        self._nc, self._js, self._lease, self._held = nc, js, lease, held
        self._store_path = partition_store(store_root, partition)
        self._config, self._prices = config, prices
        self._snapshot_every = snapshot_every_events
        self._expiry_interval = expiry_interval_s
        self._clock = clock or (lambda: datetime.now(UTC))
        self._journal = Journal(js, partition, lease.owner, held.token)
        self._journal_last = 0
        self._throttle = LogThrottle(log)
        self._ledger = Ledger(config, prices)
        self._handler = MessageHandler(self._ledger, self.counters, self._throttle, DEFAULT_MAX_SKEW)
        self._store: EventStore | None = None
        self._snapshots: SnapshotTaker | None = None
        self._batch, self._acks = Batch(), list[Msg]()
        self._work = asyncio.Event()
        self._accepting = True
        self._lost: LeaseLost | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.taken_in_s: float | None = None  # how long take() took, once it has

    @property
    def open_reservations(self) -> int:
        """Reservations granted in this partition and neither settled nor expired."""
        return self._ledger.open_reservation_count

    @property
    def stored_events(self) -> int | None:
        """Events in the partition's store (None while it is not open)."""
        return None if self._store is None else self._store.last_seq + 1

    # -- taking over ------------------------------------------------------------------------------

    async def take(self) -> None:
        """Fence, restore, catch up and attach (see the module docstring); then it decides."""
        clock = Phases()
        self._renewer = asyncio.create_task(self._renew_loop(), name=f"margins-lease-{self.partition}")
        self._journal_last = await self._fence()
        clock.done("fence")
        self._store = await self._open_store()
        restored = await asyncio.to_thread(restore, self._store, self._config, self._prices)
        self._ledger = restored.ledger
        self._handler = MessageHandler(self._ledger, self.counters, self._throttle, DEFAULT_MAX_SKEW)
        clock.done("restore")
        caught_up = await self._catch_up()
        clock.done("journal")
        self._snapshots = SnapshotTaker(
            self._store,
            self._ledger,
            settings_key(self._config),
            covered=restored.snapshot_seq,
            every_events=self._snapshot_every,
        )
        subscription = await self._attach()
        clock.done("attach")
        self._tasks = [
            asyncio.create_task(self._fetch_loop(subscription), name=f"margins-fetch-{self.partition}"),
            asyncio.create_task(self._committer(), name=f"margins-commit-{self.partition}"),
            asyncio.create_task(self._expiry_loop(), name=f"margins-expiry-{self.partition}"),
        ]
        self.taken_in_s = clock.seconds
        snapshot = (
            "no snapshot" if restored.snapshot_seq is None else f"snapshot at seq {restored.snapshot_seq}"
        )
        log.info(
            "partition %d taken (token %d) in %s: restored from the store (%s + %d events), %d events from "
            "the journal",
            self.partition,
            self._held.token,
            clock,
            snapshot,
            restored.replayed,
            caught_up,
        )

    async def _fence(self) -> int:
        """Append the LeaseTaken mark after the journal's last message; its stream seq. An old owner's
        append between our read and our mark makes the mark's fence fail: read again and retry."""
        owner, token = self._lease.owner, self._held.token
        while True:
            last = await self._journal.last_seq(self._lease_kept)
            end = (await self._journal.entry(last, self._lease_kept)).end_seq if last else 0
            try:
                return await self._journal.append(lease_taken(owner, token, end), last, self._lease_kept)
            except LeaseLost:
                if self._lost is not None:
                    raise
                log.info(
                    "partition %d: its journal moved while taking over; reading it again", self.partition
                )

    async def _open_store(self) -> EventStore:
        """The partition's store once no other process holds it (an old owner stops at its refused append)."""
        while True:
            try:
                # Segments are built in this process: a writer process per partition would cost its
                # start-up (seconds on a busy machine) in the middle of every takeover.
                return await asyncio.to_thread(EventStore.open, self._store_path, offload=False)
            except StoreError as error:
                if error.reason != HELD_ELSEWHERE:
                    raise  # a store that cannot be used: the operator must look (exit 2)
                if self._lost is not None:
                    raise self._lost from error
                self._throttle.warning("store busy", "partition %d: %s; retrying", self.partition, error)
                await asyncio.sleep(STORE_RETRY_S)

    async def _catch_up(self) -> int:
        """Append to ledger and store the journal's events the store lacks; how many."""
        assert self._store is not None
        next_seq = self._store.last_seq + 1
        added = 0
        async for entry in self._journal.entries_from(next_seq, self._journal_last, self._lease_kept):
            if entry.first_seq > next_seq:
                raise JournalError(self.partition, f"events from seq {next_seq} are missing from it")
            events = entry.events(next_seq)
            for event in events:
                self._ledger.apply(event)
            await asyncio.to_thread(self._store.append, events)
            next_seq += len(events)
            added += len(events)
        return added

    async def _attach(self) -> JetStreamContext.PullSubscription:
        """A fresh consumer of the partition's input: the old owner's (if any) is deleted first, so what it
        took and never acknowledged is delivered to us now, not after its acknowledgement wait."""
        stream = stream_name(self.partition)
        for info in await self._js.consumers_info(stream):
            with contextlib.suppress(nats.errors.Error):
                await self._js.delete_consumer(stream, info.name)
        durable = f"owner-{self._held.token}"
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=MAX_ACK_PENDING,
        )
        return await self._js.pull_subscribe(
            partition_subjects(self.partition), durable=durable, stream=stream, config=config
        )

    # -- the lease --------------------------------------------------------------------------------

    def _lease_kept(self) -> bool:
        """Whether nothing has shown the lease lost (a journal write may be retried while so)."""
        return self._lost is None and self._accepting

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease.terms.renew_every_s)
            try:
                self._held = await self._lease.renew(self._held)
            except LeaseLost as lost:
                self._lost = lost
                self._work.set()
                raise
            except (nats.errors.Error, TimeoutError) as error:  # the bucket electing a leader: try again
                self._throttle.warning(
                    "lease renewal", "partition %d: renewing its lease failed (%s)", self.partition, error
                )

    async def _until_valid(self) -> None:
        """Until the lease is valid by this process's clock (renewed in time); LeaseLost if it was lost."""
        while not self._held.is_valid(time.monotonic(), self._lease.terms):
            if self._lost is not None:
                raise self._lost
            await asyncio.sleep(0.05)

    # -- deciding ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until `request_stop()` (returns) or the lease is lost or a task fails (raises)."""
        assert self._renewer is not None, "take() first"
        done, _ = await asyncio.wait([self._renewer, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _fetch_loop(self, subscription: JetStreamContext.PullSubscription) -> None:
        while self._accepting:
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
            except TimeoutError:  # nothing came (nats-py raises its own or asyncio's, both TimeoutErrors)
                continue
            except TRANSIENT:
                await asyncio.sleep(STORE_RETRY_S)
                continue
            for message in messages:
                self._on_message(message)

    def _on_message(self, message: Msg) -> None:
        """Decide and apply now; acknowledge after the commit (as the single-broker enforcer does)."""
        if not self._accepting:
            return  # not acknowledged: delivered again to whoever decides next
        topic = topic_of_subject(message.subject)
        if topic is not None:
            publish = Publish(topic, message.data)
            try:
                self._handler.handle(publish, self._clock(), self._batch)
            except Exception as error:  # a bug costs one message (a dead letter), not the partition
                self._handler.internal_error(publish, error, self._clock(), self._batch)
        else:
            self.counters["foreign_subject"] += 1
        self._acks.append(message)
        self._work.set()

    async def _committer(self) -> None:
        """One commit at a time, in order: journal (fenced), store, then acknowledgements and answers."""
        while True:
            if not (self._batch or self._acks):
                if not self._accepting:
                    return
                await self._work.wait()
                self._work.clear()
                continue
            batch, acks = self._batch, self._acks
            self._batch, self._acks = Batch(), []
            if batch.events:
                await self._commit(batch)
            await self._release(batch, acks)
            assert self._snapshots is not None
            self._snapshots.after_commit(uncommitted=len(self._batch.events))

    async def _commit(self, batch: Batch) -> None:
        store = self._store
        assert store is not None
        await self._until_valid()  # no commit is started on a lease this process cannot vouch for
        events = batch.events
        for chunk in chunks([encode_event(event) for event in events], store.last_seq + 1):
            self._journal_last = await self._journal.append(chunk, self._journal_last, self._lease_kept)
        if len(events) <= INLINE_COMMIT_MAX:
            store.append(events)
        else:
            await asyncio.to_thread(store.append, events)
        self.counters["committed"] += len(events)
        self.counters["commits"] += 1

    async def _release(self, batch: Batch, acks: list[Msg]) -> None:
        """What waited for the commit: acknowledgements, replies, confirmations, alerts, statuses."""
        publish = self._nc.publish
        for message in acks:
            await message.ack()
        for topic, body, _correlation in batch.replies:  # reply topics were checked when taken
            await publish(subject_of_topic(topic), body)
        for topic, event_ids in batch.confirms.items():
            for body in confirm_json(event_ids):
                await publish(subject_of_topic(topic), body)
        for topic, body in batch.publishes:
            await publish(subject_of_topic(topic), body)
        now = self._clock()
        for user in batch.dirty:
            await publish(subject_of_topic(status_topic(user)), status_json(self._ledger.status(user, now)))

    async def _expiry_loop(self) -> None:
        """Expire unsettled reservations, as events, so a replay and the next owner agree."""
        while True:
            await asyncio.sleep(self._expiry_interval)
            events = self._ledger.expire_due(self._clock())
            if events:
                self._handler.take(events, self._batch)
                self._work.set()
            self._throttle.flush()

    # -- giving it up -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop deciding. With the lease still ours: commit and answer what was decided, snapshot, close the
        store and release the lease (a successor takes it at once). With the lease lost: drop what was
        decided and not committed (its messages are delivered again to the new owner) and close. A lease
        still ours is released even after a failed commit: the journal's fence keeps a successor safe."""
        self._accepting = False
        self._work.set()
        fetch, committer, expiry = self._tasks or (None, None, None)
        for task in (fetch, expiry):
            if task is not None:
                task.cancel()
        clean = self._lost is None and committer is not None and not committer.done()
        if clean and committer is not None:
            try:
                await asyncio.wait_for(committer, timeout=30)
            except (LeaseLost, TimeoutError, nats.errors.Error) as error:
                log.warning("partition %d: the last commit did not go through: %s", self.partition, error)
                clean = False
        for task in (*self._tasks, *([self._renewer] if self._renewer is not None else [])):
            task.cancel()
        await asyncio.gather(
            *self._tasks, *([self._renewer] if self._renewer else []), return_exceptions=True
        )
        if self._store is not None:
            if clean and self._snapshots is not None:
                await asyncio.to_thread(self._snapshots.final, len(self._batch.events))
            await asyncio.to_thread(self._store.close)
            self._store = None
        self._throttle.flush_all()
        if self._lost is None:  # whatever was not committed is refused by the fence: a successor may start
            with contextlib.suppress(LeaseLost, nats.errors.Error, TimeoutError):
                await self._lease.release(self._held)
