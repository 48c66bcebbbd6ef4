"""The enforcer: MQTT in, decisions and status out; the async shell around the pure ledger.

Path of a message: decode (budget.service.wire) -> dedupe and decide (ledger.decide) -> apply to the in-memory
ledger -> group commit to the store (one fsync for everything that arrived meanwhile) -> only then its
PUBACK, its authorization reply, the user's retained status, alerts and dead letters.

Why apply before the commit: every decision must see every earlier reservation, also those of the batch
not yet on disk, or 200 concurrent authorizations would all be decided against the same remaining budget.
Nothing leaves the process before its batch and all earlier batches are durable (one committer, in order),
so whatever anyone observed is on disk; if a commit fails the process exits, the broker redelivers the
unacknowledged messages, and the restart replays the store into a fresh ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import assert_never

from budget.domain.config import EnforcerConfig
from budget.domain.events import (
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
from budget.domain.ledger import ConfigureUser, Ledger, RecordUsage, reservation_id_for
from budget.domain.prices import PriceCatalog, nanos_to_usd
from budget.errors import ConnectionLost
from budget.mqtt.broker import BrokerSettings
from budget.mqtt.connection import Mqtt5Connection, close_quietly
from budget.mqtt.packets import Publish
from budget.mqtt.topics import ADMIN_PREFIX, AUTHORIZE_PREFIX, USAGE_PREFIX, alert_topic, status_topic
from budget.service.messages import (
    alert_json,
    counters_text,
    encode_json,
    reply_json,
    safe_reply_topic,
    status_json,
)
from budget.service.wire import DEFAULT_MAX_SKEW, AuthorizeRequest, Rejected, decode_message
from budget.store.event_store import FLUSH_INTERVAL_S, EventStore
from budget.store.headroom import DEFAULT_MIN_FREE_MB, MIB

log = logging.getLogger("margins.enforce")

SUBSCRIPTIONS = tuple(f"{prefix}+" for prefix in (USAGE_PREFIX, AUTHORIZE_PREFIX, ADMIN_PREFIX))
DEADLETTER_TOPIC = "margins/deadletter"
STATS_TOPIC = "margins/enforcer/stats"
READY_LOG = "enforcer ready"


@dataclass(slots=True)
class _Batch:
    """Decided and applied, not yet durable: the events and everything that waits for them."""

    events: list[Event] = field(default_factory=list)
    acks: list[tuple[int, int]] = field(default_factory=list)  # (connection, packet id)
    replies: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)
    publishes: list[tuple[str, bytes]] = field(default_factory=list)  # alerts and dead letters
    dirty: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.events or self.acks or self.replies or self.publishes)


class Enforcer:
    """The live enforcer as an `async with` component.

    Entering opens the store, replays it into the ledger and starts three named tasks: the broker
    connection (reconnecting with backoff), the committer, and the reservation-expiry timer. `wait()`
    returns when `request_stop()` is called and raises if a task failed; leaving the block commits and
    acknowledges what was decided, closes the store and disconnects.
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
    ) -> None:
        self.broker = broker
        self.store_path = Path(store_path)
        self.ledger = Ledger(config, prices if prices is not None else config.catalog())
        self.counters: Counter[str] = Counter()
        self._max_skew = max_skew
        self._inline_commit_max = inline_commit_max
        self._store_flush_interval = store_flush_interval_s
        self._min_free_bytes = min_free_bytes
        self._expiry_interval = expiry_interval_s
        self._clock = clock or (lambda: datetime.now(UTC))
        self._store: EventStore | None = None
        self._client: Mqtt5Connection | None = None
        self._connection = 0  # bumped on every connect: an ack belongs to the connection it came on
        self._batch = _Batch()
        self._work = asyncio.Event()
        self._stop = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._accepting = True
        self._tasks: list[asyncio.Task[None]] = []
        self._stats_sent: dict[str, int] = {}

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Enforcer:
        self._store = await asyncio.to_thread(
            EventStore.open,
            self.store_path,
            flush_interval=self._store_flush_interval,
            min_free_bytes=self._min_free_bytes,
        )
        replayed = await asyncio.to_thread(self._replay)
        # The replayed ledger lives as long as the process: keep the cyclic collector from re-scanning it
        # in every full collection (tens of ms over a large ledger, paid by whichever request is waiting).
        gc.collect()
        gc.freeze()
        log.info("replayed %d events from %s", replayed, self.store_path)
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
        count = 0
        for event in self._store.replay():
            self.ledger.apply(event)
            count += 1
        return count

    def _republish_status(self, client: Mqtt5Connection) -> None:
        """Once per start: every replayed user's status, since a crash between a commit and its status
        publish would otherwise leave a stale retained status until the user's next event."""
        now = self._clock()
        for user in sorted(self.ledger.users()):
            client.publish(status_topic(user), status_json(self.ledger.status(user, now)), retain=True)

    def request_stop(self) -> None:
        """Ask `wait()` to return (safe to call from a signal handler on the loop)."""
        self._stop.set()

    async def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Until the first subscription is in place (the broker then queues for us whatever we miss)."""
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    async def wait(self) -> None:
        """Until a stop is requested; re-raises the error of a task that failed."""
        stop = asyncio.create_task(self._stop.wait(), name="margins-stop")
        done, _ = await asyncio.wait([stop, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
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
            await asyncio.to_thread(self._store.close)
            self._store = None
        log.info("enforcer stopped: %s", counters_text(self.counters))

    # -- broker -----------------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        backoff = 0.1
        b = self.broker
        while not self._stop.is_set():
            # Known before connecting: a resumed session delivers its queue right after CONNACK, and those
            # messages must be acknowledged on this connection.
            client = Mqtt5Connection(self._on_message)
            self._connection += 1
            self._client = client
            try:
                await client.start(
                    b.host,
                    b.port,
                    client_id=b.client_id,
                    username=b.username,
                    password=b.password,
                    tls=b.tls_context(),
                    keepalive_s=b.keepalive_s,
                    session_expiry_s=b.session_expiry_s,
                    receive_maximum=b.receive_maximum,
                )
                await client.subscribe(list(SUBSCRIPTIONS))
                backoff = 0.1
                if not self._subscribed.is_set():
                    self._republish_status(client)
                self._subscribed.set()
                log.info("%s: subscribed on %s:%d", READY_LOG, b.host, b.port)
                await client.wait_closed()
            except ConnectionLost as error:
                log.warning("broker %s:%d: %s; retrying", b.host, b.port, error.reason)
            finally:
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
        try:
            self._handle(message.topic, message.payload, message.response_topic, message.correlation, batch)
        except Exception as error:  # a bug must cost one message (kept as a dead letter), not the service
            log.exception("cannot handle a message on %s", message.topic)
            rejected = Rejected("internal_error", repr(error), message.payload)
            self._dead_letter(message.topic, rejected, self._clock(), batch)
        if message.qos:
            batch.acks.append((self._connection, message.packet_id))
        self._work.set()

    def _handle(
        self, topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None, batch: _Batch
    ) -> None:
        now = self._clock()
        decoded = decode_message(topic, payload, now, self._max_skew)
        for rejected in decoded.rejected:
            self._dead_letter(topic, rejected, now, batch)
            reply_to = rejected.reply_to or safe_reply_topic(response_topic)  # wire checked rejected.reply_to
            if topic.startswith(AUTHORIZE_PREFIX) and reply_to is not None:
                body = reply_json(
                    rejected.request_id, "deny", None, None, None, f"{rejected.reason}: {rejected.detail}"
                )
                batch.replies.append((reply_to, body, correlation))
        for command in decoded.commands:
            if isinstance(command, RecordUsage):  # the hot path, ahead of the match (see Ledger.apply)
                events = self.ledger.decide(command, now)
                if not events:
                    self.counters["duplicate"] += 1
                self._take(events, batch)
                continue
            match command:
                case AuthorizeRequest():
                    self._authorize(
                        command,
                        command.reply_to or safe_reply_topic(response_topic),  # wire checked command.reply_to
                        correlation,
                        now,
                        batch,
                    )
                case ConfigureUser():
                    self._take(self.ledger.decide(command, now), batch)
                case _:
                    assert_never(command)

    def _authorize(
        self,
        request: AuthorizeRequest,
        reply_to: str | None,
        correlation: bytes | None,
        now: datetime,
        batch: _Batch,
    ) -> None:
        command = request.command
        events = self.ledger.decide(command, now)
        self._take(events, batch)
        granted = next((e for e in events if isinstance(e, ReservationGranted)), None)
        denied = next((e for e in events if isinstance(e, ReservationDenied)), None)
        if granted is None and denied is None:  # a redelivered request: answer with what it already holds
            granted = self.ledger.reservation(reservation_id_for(command.user_id, command.request_id))
        remaining = nanos_to_usd(self.ledger.status(command.user_id, now).remaining_nanos)
        if granted is not None:
            self.counters["granted"] += 1
            body = reply_json(
                command.request_id, granted.decision, granted.model, granted.reservation_id, remaining, ""
            )
        elif denied is not None:
            self.counters["denied"] += 1
            log.info("deny %s %s: %s", command.user_id, command.model, denied.reason)
            body = reply_json(
                command.request_id,
                "deny",
                command.model,
                None,
                nanos_to_usd(denied.remaining_nanos),
                denied.reason,
            )
        else:
            body = reply_json(
                command.request_id, "deny", command.model, None, remaining, "not decided; retry"
            )
        if reply_to is None:
            self.counters["no_reply_topic"] += 1
        else:
            batch.replies.append((reply_to, body, correlation))

    def _take(self, events: list[Event], batch: _Batch) -> None:
        """Apply decided events and queue what must follow their commit."""
        apply, append, dirty = self.ledger.apply, batch.events.append, batch.dirty.add
        counters = self.counters
        for event in events:
            apply(event)
            append(event)
            if isinstance(event, UsageRecorded):  # the hot path (see Ledger.apply): only the status to send
                dirty(event.user_id)
                counters["UsageRecorded"] += 1
                continue
            if event.user_id is not None:  # every event names its user; a dead letter may not know it
                dirty(event.user_id)
            match event:
                case ReservationGranted() | ReservationDenied():
                    counters[type(event).__name__] += 1
                case LimitCrossed():
                    counters[f"alert_{event.limit}"] += 1
                    log.info("%s limit reached: %s %s", event.limit, event.user_id, event.month)
                    batch.publishes.append((alert_topic(event.user_id), alert_json(event)))
                case DeadLettered():
                    self._count_dead(event)
                    batch.publishes.append((DEADLETTER_TOPIC, encode_event(event)))
                    if event.reason == "unknown_model" and event.user_id:
                        alert = {"alert": "unknown_model", "user_id": event.user_id, "detail": event.detail}
                        batch.publishes.append((alert_topic(event.user_id), encode_json(alert)))
                case UserConfigured():
                    log.info(
                        "configured %s: cap_nanos=%s plan=%s tz=%s",
                        event.user_id,
                        event.cap_nanos,
                        event.plan,
                        event.timezone,
                    )
                case ReservationExpired():
                    counters["expired"] += 1
                    log.info("reservation %s of %s expired", event.reservation_id, event.user_id)
                case ReservationRenewed():
                    counters["renewed"] += 1
                case _:
                    assert_never(event)

    def _dead_letter(self, topic: str, rejected: Rejected, now: datetime, batch: _Batch) -> None:
        event = DeadLettered.of(
            ts=now,
            topic=topic,
            payload=rejected.payload,
            reason=rejected.reason,
            detail=rejected.detail,
            user_id=rejected.user_id,
        )
        self._take([event], batch)

    def _count_dead(self, event: DeadLettered) -> None:
        self.counters[f"dead_letter_{event.reason}"] += 1
        log.warning("dead letter (%s) from %s: %s", event.reason, event.topic, event.detail)

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
            batch, self._batch = self._batch, _Batch()
            if batch.events:
                assert self._store is not None
                if len(batch.events) <= self._inline_commit_max:
                    # A small batch (an authorization or a few events) costs one fdatasync (~0.3 ms here); a
                    # thread hop would cost more, because the worker waits for the GIL behind the loop.
                    self._store.append(batch.events)
                else:  # a big one: keep receiving the next batch while this one is written
                    await asyncio.to_thread(self._store.append, batch.events)
                self.counters["committed"] += len(batch.events)
                self.counters["commits"] += 1
            self._release(batch)

    def _release(self, batch: _Batch) -> None:
        client, connection = self._client, self._connection
        if client is None:
            return  # disconnected: the broker redelivers the messages; replies and status come again later
        for conn, packet_id in batch.acks:
            if conn == connection:  # a packet id from an earlier connection means nothing on this one
                client.ack(packet_id)
        for topic, body, correlation in batch.replies:
            client.publish(topic, body, correlation=correlation)
        for topic, body in batch.publishes:
            client.publish(topic, body)
        if batch.dirty:
            now = self._clock()
            for user in batch.dirty:
                client.publish(status_topic(user), status_json(self.ledger.status(user, now)), retain=True)

    # -- timers -----------------------------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        """Expire unsettled reservations (as events, so a replay agrees) and publish counters."""
        while True:
            await asyncio.sleep(self._expiry_interval)
            events = self.ledger.expire_due(self._clock())
            if events:
                self._take(events, self._batch)
                self._work.set()
            client = self._client
            if client is not None and dict(self.counters) != self._stats_sent:
                self._stats_sent = dict(self.counters)
                client.publish(STATS_TOPIC, encode_json(self._stats_sent), qos=0, retain=True)
