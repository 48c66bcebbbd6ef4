"""The enforcer: MQTT in, decisions and status out; the async shell around the pure ledger.

Path of a message: decode (budget.service.wire) -> dedupe and decide (ledger.decide) -> apply to the in-memory
ledger -> group commit to the store (one fsync for everything that arrived meanwhile) -> only then its
PUBACK, its authorization reply, its confirmation, the user's retained status, alerts and dead letters.

Why apply before the commit: every decision must see every earlier reservation, also those of the batch
not yet on disk, or 200 concurrent authorizations would all be decided against the same remaining budget.
Nothing leaves the process before its batch and all earlier batches are durable (one committer, in order),
so whatever anyone observed is on disk; if a commit fails the process exits, the broker redelivers the
unacknowledged messages, and the restart restores the newest ledger snapshot and replays the events after
it (budget.service.snapshots; snapshots are taken as the ledger goes on, and at a clean stop).

The HTTP door (`http`, off by default; budget.service.http_app) is a second way in to the same handler
and the same batches: a request is decided like the message its body would be, and answered once its
batch is durable, as an MQTT reply is.

Ready (subscribed, answering) comes before anything else is sent: the retained status of every user active
this month is republished in the background, a window at a time, behind whatever answers are waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from budget.domain.config import EnforcerConfig
from budget.domain.ledger import Ledger
from budget.domain.prices import PriceCatalog
from budget.errors import ConnectionLost, DoorClosed
from budget.mqtt.broker import BrokerSettings
from budget.mqtt.connection import Mqtt5Connection, close_quietly
from budget.mqtt.packets import Publish
from budget.mqtt.topics import (
    ADMIN_PREFIX,
    AUTHORIZE_PREFIX,
    RENEW_PREFIX,
    USAGE_PREFIX,
    status_topic,
    topic_problem,
)
from budget.service.defaults import SNAPSHOT_EVERY_EVENTS
from budget.service.door import HttpSettings
from budget.service.handler import DEADLETTER_TOPIC, Answer, Batch, MessageHandler
from budget.service.instruments import ReplayStats, Timings
from budget.service.messages import confirm_json, counters_text, encode_json, status_json
from budget.service.snapshots import SnapshotTaker, restore, settings_key
from budget.service.throttle import LogThrottle
from budget.service.wire import DEFAULT_MAX_SKEW, decode_addressed
from budget.store.event_store import FLUSH_INTERVAL_S, EventStore
from budget.store.headroom import DEFAULT_MIN_FREE_MB, MIB

if TYPE_CHECKING:
    from budget.service.http_server import HttpServer

log = logging.getLogger("margins.enforce")

SUBSCRIPTIONS = tuple(f"{prefix}+" for prefix in (USAGE_PREFIX, AUTHORIZE_PREFIX, RENEW_PREFIX, ADMIN_PREFIX))
STATS_TOPIC = "margins/enforcer/stats"
READY_LOG = "enforcer ready"
__all__ = ["DEADLETTER_TOPIC", "READY_LOG", "STATS_TOPIC", "SUBSCRIPTIONS", "Enforcer"]
# The start-up status republish keeps at most this many publishes pending (in flight or queued) on the
# connection, so an authorization reply waits behind a few hundred statuses at most, never a million.
REPUBLISH_BACKLOG = 256
REPUBLISH_SLICE = 1024  # users looked at per loop turn (most may have nothing this month)


class Enforcer:
    """The live enforcer as an `async with` component.

    Entering opens the store, restores the ledger (its newest snapshot and the events after it) and starts
    three named tasks: the broker connection (reconnecting with backoff), the committer, and the
    reservation-expiry timer. With `http`, the HTTP door listens before the replay (its /healthz answers
    meanwhile, its /v1 routes once replayed). `wait()` returns when `request_stop()` is called and raises if
    a task failed; leaving the block stops taking requests, commits what was decided and answers it, then
    snapshots the ledger, closes the store and disconnects.
    """

    def __init__(
        self,
        broker: BrokerSettings,
        store_path: str | Path,
        config: EnforcerConfig,
        *,
        prices: PriceCatalog | None = None,
        max_skew: timedelta = DEFAULT_MAX_SKEW,
        expiry_interval_s: float = 0.5,
        inline_commit_max: int = 32,
        store_flush_interval_s: float | None = FLUSH_INTERVAL_S,
        clock: Callable[[], datetime] | None = None,
        min_free_bytes: int = DEFAULT_MIN_FREE_MB * MIB,
        snapshot_every_events: int = SNAPSHOT_EVERY_EVENTS,
        http: HttpSettings | None = None,
    ) -> None:
        self.broker = broker
        self.store_path = Path(store_path)
        self._config = config
        self._prices = prices if prices is not None else config.catalog()
        self._max_skew = max_skew
        self.counters: Counter[str] = Counter()
        self._throttle = LogThrottle(log)
        self._set_ledger(Ledger(config, self._prices))  # replaced by the restored one on entering
        self._snapshot_every_events = snapshot_every_events
        self._snapshots: SnapshotTaker | None = None
        self._inline_commit_max = inline_commit_max
        self._store_flush_interval = store_flush_interval_s
        self._min_free_bytes = min_free_bytes
        self._expiry_interval = expiry_interval_s
        self._clock = clock or (lambda: datetime.now(UTC))
        self._store: EventStore | None = None
        self._client: Mqtt5Connection | None = None
        self._connection = 0  # bumped on every connect: an ack belongs to the connection it came on
        self._batch = Batch()
        self._committing: Batch | None = None  # the batch being written, until it is released
        self._work = asyncio.Event()
        self._stop = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._live = False  # subscribed on the current connection
        self._replayed = False
        self._accepting = True
        self._http_settings = http
        self._http: HttpServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stats_sent: dict[str, int] = {}
        self._to_republish: list[str] = []  # users whose status goes out again after a start
        self._republished = 0  # how many of them have been looked at
        self._timings: Timings | None = None
        self.replay_stats: ReplayStats | None = None  # set once the store is replayed
        self._restored_from: int | None = None  # the seq of the snapshot the ledger was restored from

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Enforcer:
        if self._http_settings is not None:
            await self._open_http(self._http_settings)
        try:
            self._store = await asyncio.to_thread(
                EventStore.open,
                self.store_path,
                flush_interval=self._store_flush_interval,
                min_free_bytes=self._min_free_bytes,
            )
            started = time.perf_counter()
            replayed = await asyncio.to_thread(self._replay)
            self.replay_stats = ReplayStats(replayed, time.perf_counter() - started, self._restored_from)
        except BaseException:
            if self._http is not None:
                await self._http.stop()
            raise
        # The replayed ledger lives as long as the process: keep the cyclic collector from re-scanning it
        # in every full collection (tens of ms over a large ledger, paid by whichever request is waiting).
        gc.collect()
        gc.freeze()
        log.info("replayed %d events from %s", replayed, self.store_path)
        self._replayed = True
        self._tasks = [
            asyncio.create_task(self._committer(), name="margins-committer"),
            asyncio.create_task(self._connect_loop(), name="margins-broker"),
            asyncio.create_task(self._expiry_loop(), name="margins-expiry"),
        ]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self._shutdown()

    def _replay(self) -> int:
        assert self._store is not None
        restored = restore(self._store, self._config, self._prices)
        self._set_ledger(restored.ledger)
        self._restored_from = restored.snapshot_seq
        self._snapshots = SnapshotTaker(
            self._store,
            self.ledger,
            settings_key(self._config),
            covered=restored.snapshot_seq,
            every_events=self._snapshot_every_events,
        )
        if restored.snapshot_seq is not None:
            log.info("restored the ledger from its snapshot at seq %d", restored.snapshot_seq)
        # Taken here, in the replay's thread, while nothing else touches the ledger: a crash between a
        # commit and its status publish would otherwise leave a stale retained status until the user's
        # next event. Only users with spend or reservations this month are republished (see _republish).
        self._to_republish = list(self.ledger.users())
        return restored.replayed

    def _set_ledger(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._handler = MessageHandler(ledger, self.counters, self._throttle, self._max_skew)
        self._handle = self._handler.handle  # bound once: it runs for every message

    def observe_with(self, timings: Timings) -> None:
        """Hand every commit's duration and every authorization's time in the process to `timings`."""
        self._timings = timings

    @property
    def store(self) -> EventStore | None:
        """The open event store (None before entering and after leaving)."""
        return self._store

    def request_stop(self) -> None:
        """Ask `wait()` to return (safe to call from a signal handler on the loop)."""
        self._stop.set()

    async def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Until the first subscription is in place (the broker then queues for us whatever we miss)."""
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    @property
    def republishing(self) -> bool:
        """Whether the start-up status republish is still going on."""
        return self._republished < len(self._to_republish)

    async def wait(self) -> None:
        """Until a stop is requested; re-raises the error of a task that failed."""
        stop = asyncio.create_task(self._stop.wait(), name="margins-stop")
        watched = [stop, *self._tasks, *([self._http.task] if self._http is not None else [])]
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        for task in done:
            if task is not stop and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _shutdown(self) -> None:
        self._accepting = False  # what arrives now stays unacknowledged: the broker redelivers it later
        committer, _broker, expiry = self._tasks or (None, None, None)
        if expiry is not None:
            expiry.cancel()
        if committer is not None and not committer.done():
            self._work.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(committer, timeout=30)
        if self._http is not None:  # every request it took is answered by now: let the answers go out
            await self._http.stop()
        self._stop.set()  # no reconnecting from here on
        client = self._client
        if client is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):  # let replies, status and alerts reach the broker
                    while client.pending and client.is_open:
                        await asyncio.sleep(0.01)
            await close_quietly(client)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._store is not None:
            if self._snapshots is not None:
                await asyncio.to_thread(self._snapshots.final, len(self._batch.events))
            await asyncio.to_thread(self._store.close)
            self._store = None
        self._throttle.flush_all()
        log.info("enforcer stopped: %s", counters_text(self.counters))

    # -- broker -----------------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        backoff = 0.1
        failures = 0  # attempts in a row that failed: the first is a warning, the rest routine
        b = self.broker
        while not self._stop.is_set():
            # Known before connecting: a resumed session delivers its queue right after CONNACK, and those
            # messages must be acknowledged on this connection.
            client = Mqtt5Connection(self._on_message, self._on_refused)
            self._connection += 1
            self._client = client
            republish: asyncio.Task[None] | None = None
            try:
                await client.start_session(b)
                await client.subscribe(list(SUBSCRIPTIONS))
                self.counters["connections"] += 1
                if failures:
                    log.info("reconnected to %s:%d after %d failed attempts", b.host, b.port, failures)
                backoff, failures = 0.1, 0
                self._subscribed.set()
                self._live = True
                log.info(
                    "%s: subscribed on %s:%d (the broker takes %d publishes in flight)",
                    READY_LOG,
                    b.host,
                    b.port,
                    client.send_quota,
                )
                if self.republishing:
                    republish = asyncio.create_task(self._republish(client), name="margins-republish")
                await client.wait_closed()
            except ConnectionLost as error:
                failures += 1
                level = logging.WARNING if failures == 1 else logging.INFO
                log.log(level, "broker %s:%d: %s; retrying in %.1f s", b.host, b.port, error.reason, backoff)
            finally:
                self._live = False
                if republish is not None:
                    republish.cancel()
                self._client = None
                if self._stop.is_set():
                    await close_quietly(client)
                else:
                    client.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _on_message(self, message: Publish) -> None:
        """Runs in the loop for every message: decide and apply now, acknowledge after the commit."""
        if not self._accepting:
            return
        batch = self._batch
        arrived, replies = 0.0, 0
        if self._timings is not None and message.topic.startswith(AUTHORIZE_PREFIX):
            arrived, replies = time.perf_counter(), len(batch.replies)  # per authorization, never per usage
        try:
            self._handle(message, self._clock(), batch)
        except Exception as error:  # a bug must cost one message (kept as a dead letter), not the service
            self._handler.internal_error(message, error, self._clock(), batch)
        if message.qos:
            batch.acks.append((self._connection, message.packet_id))
        if arrived and len(batch.replies) > replies:
            batch.arrivals.append(arrived)
        self._work.set()

    def _on_refused(self, topic: str, reason_code: int) -> None:
        """The broker acknowledged one of our publishes with a failure: that message is lost, the
        connection is fine."""
        self.counters["publish_refused"] += 1
        self._throttle.warning(
            f"refused 0x{reason_code:02x}",
            "the broker refused a publish to %s (reason code 0x%02x)",
            topic,
            reason_code,
        )

    async def _republish(self, client: Mqtt5Connection) -> None:
        """The retained status of every user active this month, after a start: a window at a time, so
        answers never queue behind it. A lost connection pauses it; the next one goes on from there."""
        try:
            while self._republished < len(self._to_republish):
                await client.wait_for_room(REPUBLISH_BACKLOG)
                self._republish_slice(client, REPUBLISH_BACKLOG - client.pending)
                await asyncio.sleep(0)  # let messages in between slices
        except ConnectionLost:
            return
        self._to_republish, self._republished = [], 0  # a million user ids need not stay
        log.info("republished the status of %d users active this month", self.counters["status_republished"])

    def _republish_slice(self, client: Mqtt5Connection, room: int) -> None:
        """Up to `room` statuses, looking at no more than REPUBLISH_SLICE users. Users with events not yet
        durable are skipped: their status goes out after their commit anyway, and a status must never show
        what is not on disk."""
        users, now = self._to_republish, self._clock()
        busy = self._batch.dirty | (self._committing.dirty if self._committing is not None else set())
        end = min(len(users), self._republished + REPUBLISH_SLICE)
        while self._republished < end and room > 0:
            user = users[self._republished]
            self._republished += 1
            status = self.ledger.status(user, now)
            if (status.spent_nanos or status.reserved_nanos) and user not in busy:
                self._publish(client, status_topic(user), status_json(status), retain=True)
                self.counters["status_republished"] += 1
                room -= 1

    # -- commit and release -----------------------------------------------------------------------

    async def _committer(self) -> None:
        """One commit at a time, in order; whatever arrives during a commit forms the next batch."""
        while True:
            if not self._batch:
                if not self._accepting:
                    return
                await self._work.wait()
                self._work.clear()
                continue
            batch, self._batch = self._batch, Batch()
            self._committing = batch
            if batch.events:
                assert self._store is not None
                started = time.perf_counter()
                if len(batch.events) <= self._inline_commit_max and not batch.waiters:
                    # A small batch (an authorization or a few events) costs one fdatasync (~0.3 ms here); a
                    # thread hop would cost more, because the worker waits for the GIL behind the loop. Not
                    # so for HTTP requests: each takes several loop turns (parse, decide, answer), and a
                    # loop held by fdatasync stalls every one of them for a whole commit.
                    self._store.append(batch.events)
                else:  # a big one: keep receiving the next batch while this one is written
                    await asyncio.to_thread(self._store.append, batch.events)
                if self._timings is not None:
                    self._timings.committed(time.perf_counter() - started)
                self.counters["committed"] += len(batch.events)
                self.counters["commits"] += 1
            self._release(batch)
            self._committing = None
            if self._snapshots is not None:
                self._snapshots.after_commit(uncommitted=len(self._batch.events))

    def _release(self, batch: Batch) -> None:
        for waiter in batch.waiters:  # HTTP requests: answered whether or not the broker is there
            waiter()
        client, connection = self._client, self._connection
        if client is None:
            return  # disconnected: the broker redelivers the messages; replies and status come again later
        for conn, packet_id in batch.acks:
            if conn == connection:  # a packet id from an earlier connection means nothing on this one
                client.ack(packet_id)
        for topic, body, correlation in batch.replies:  # reply topics were checked when taken
            client.publish(topic, body, correlation=correlation)
        if batch.arrivals and self._timings is not None:
            self._timings.replied(batch.arrivals, time.perf_counter())
        for topic, event_ids in batch.confirms.items():
            for body in confirm_json(event_ids):
                client.publish(topic, body)
            self.counters["confirmations"] += 1
        for topic, body in batch.publishes:
            self._publish(client, topic, body)
        if batch.dirty:
            now = self._clock()
            status = self.ledger.status
            for user in batch.dirty:
                self._publish(client, status_topic(user), status_json(status(user, now)), retain=True)

    def _publish(self, client: Mqtt5Connection, topic: str, body: bytes, retain: bool = False) -> None:
        """Publish unless the broker would take the topic as malformed (and drop the connection for it)."""
        problem = topic_problem(topic)
        if problem is None:
            client.publish(topic, body, retain=retain)
            return
        self.counters["unpublishable_topic"] += 1
        self._throttle.warning("unpublishable topic", "not published: %s", problem)

    # -- timers -----------------------------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        """Expire unsettled reservations (as events, so a replay agrees), publish counters, and say how
        many log lines the throttle held back."""
        while True:
            await asyncio.sleep(self._expiry_interval)
            events = self.ledger.expire_due(self._clock())
            if events:
                self._handler.take(events, self._batch)
                self._work.set()
            self._throttle.flush()
            client = self._client
            if client is not None and dict(self.counters) != self._stats_sent:
                self._stats_sent = dict(self.counters)
                client.publish(STATS_TOPIC, encode_json(self._stats_sent), qos=0, retain=True)

    # -- the HTTP door (budget.service.door.Door) --------------------------------------------------

    async def _open_http(self, settings: HttpSettings) -> None:
        from budget.service.http_app import create_app, metrics_route  # Starlette, uvicorn only when asked
        from budget.service.http_server import HttpServer, bind
        from budget.service.metrics import EnforcerMetrics

        routes = (*settings.extra_routes, metrics_route(EnforcerMetrics(self).exposition))
        app = create_app(self, self._config.http_apps, self.counters, self._throttle, routes)
        self._http = HttpServer(app, bind(settings), settings.host)
        await self._http.start()

    @property
    def http_port(self) -> int | None:
        """The port the HTTP door listens on (the one the OS chose for port 0), or None without one."""
        return self._http.port if self._http is not None else None

    def readiness(self) -> str | None:
        """None when replayed and subscribed to the broker, else why not (for /readyz)."""
        if not self._replayed:
            return "replaying the event store"
        if not self._accepting:
            return "stopping"
        if not self._live:
            return "not subscribed to the broker"
        return None

    def _check_open(self) -> None:
        if not self._replayed:
            raise DoorClosed("replaying the event store")
        if not self._accepting:
            raise DoorClosed("stopping")

    async def submit(self, prefix: str, payload: bytes) -> Answer:
        """Decide a body as if published on `prefix` + its user; return its answer once durable."""
        self._check_open()
        timed = self._timings is not None and prefix == AUTHORIZE_PREFIX
        arrived = time.perf_counter() if timed else 0.0
        now = self._clock()
        topic, decoded = decode_addressed(prefix, payload, now, self._max_skew)
        message = Publish(topic, payload)
        answer = Answer()
        batch = self._batch
        try:
            self._handle(message, now, batch, decoded, answer)
        except Exception as error:  # as for an MQTT message: one dead letter, the service goes on
            answer.rejection = self._handler.internal_error(message, error, self._clock(), batch)
        await self._durable(batch)
        if timed and answer.reply is not None and self._timings is not None:
            self._timings.replied([arrived], time.perf_counter())  # as an MQTT reply's: decide to durable
        return answer

    async def settled_status(self, user_id: str) -> bytes:
        """The user's status once none of their events waits for a commit: a status never shows what is
        not on disk."""
        self._check_open()
        while True:
            if user_id in self._batch.dirty:
                await self._durable(self._batch)
            elif self._committing is not None and user_id in self._committing.dirty:
                await self._durable(self._committing)
            else:
                return status_json(self.ledger.status(user_id, self._clock()))

    def _durable(self, batch: Batch) -> asyncio.Future[None]:
        """Resolved once `batch` (and every batch before it) is committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def release() -> None:
            if not future.done():
                future.set_result(None)

        batch.waiters.append(release)
        self._work.set()
        return future
