"""One incoming message: decode, decide against the ledger, apply -- and put into the batch everything that
may leave the process only after the batch's commit (acknowledgement, reply, confirmation, status, alerts,
the dead letter).

Whatever a message holds, it yields at most one dead letter: the wire's rejected items and the ledger's
(an unknown model, say) are summed up in one `Rejection` (budget.service.rejection).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import assert_never

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
from budget.domain.ledger import ConfigureUser, Ledger, RecordUsage, RenewReservation, reservation_id_for
from budget.domain.prices import nanos_to_usd
from budget.mqtt.packets import Publish
from budget.mqtt.topics import AUTHORIZE_PREFIX, USAGE_PREFIX, alert_topic, reply_topic_problem
from budget.service.messages import alert_json, overshoot_json, reply_json, unknown_model_json
from budget.service.rejection import Rejection
from budget.service.throttle import LogThrottle
from budget.service.wire import DEFAULT_MAX_SKEW, AuthorizeRequest, Decoded, decode_message

log = logging.getLogger("margins.enforce")

DEADLETTER_TOPIC = "margins/deadletter"


@dataclass(slots=True)
class Batch:
    """Decided and applied, not yet durable: the events and everything that waits for their commit."""

    events: list[Event] = field(default_factory=list)
    acks: list[tuple[int, int]] = field(default_factory=list)  # (connection, packet id)
    replies: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)
    publishes: list[tuple[str, bytes]] = field(default_factory=list)  # alerts and dead letters
    confirms: dict[str, list[str]] = field(default_factory=dict)  # reply topic -> event ids settled
    dirty: set[str] = field(default_factory=set)
    arrivals: list[float] = field(default_factory=list)  # perf_counter() of timed authorizations replied to
    # Callers waiting for this batch to be durable (the HTTP door's requests): called after the commit.
    waiters: list[Callable[[], None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.events or self.acks or self.replies or self.publishes or self.confirms or self.waiters
        )


@dataclass(slots=True)
class Answer:
    """What a request that came without a topic (over HTTP) is told, once its batch is durable: the
    authorization reply, the usage event ids settled (as an MQTT confirmation lists them), and the
    rejected part -- the same `Rejection` that became the message's dead letter."""

    reply: bytes | None = None
    confirmed: list[str] = field(default_factory=list)
    rejection: Rejection | None = None


class MessageHandler:
    """Decides each message against `ledger` and applies what it decided, counting in `counters`."""

    def __init__(
        self,
        ledger: Ledger,
        counters: Counter[str],
        throttle: LogThrottle,
        max_skew: timedelta = DEFAULT_MAX_SKEW,
    ) -> None:
        self.ledger = ledger
        self.counters = counters
        self.throttle = throttle
        self._max_skew = max_skew

    def handle(
        self,
        message: Publish,
        now: datetime,
        batch: Batch,
        decoded: Decoded | None = None,
        answer: Answer | None = None,
    ) -> None:
        """Decode, decide and apply one message; queue in `batch` what must follow the commit.

        With `answer` (a request over HTTP, already `decoded`), the reply and confirmation are put there
        instead of being published; the dead letter, status and alerts go out as for any message."""
        topic, payload = message.topic, message.payload
        if decoded is None:
            decoded = decode_message(topic, payload, now, self._max_skew, message.message_expiry_s)
        rejection = decoded.rejection
        confirmed: list[str] | None = None  # the usage events to confirm to a sender that asked
        if (message.response_topic is not None or answer is not None) and topic.startswith(USAGE_PREFIX):
            confirmed = list(rejection.event_ids) if rejection is not None else []
        dead: list[DeadLettered] = []  # the ledger's rejections, summed up with the wire's below
        decide, take, counters = self.ledger.decide, self.take, self.counters
        apply, append, dirty = self.ledger.apply, batch.events.append, batch.dirty.add
        recorded = 0
        for command in decoded.commands:
            if isinstance(command, RecordUsage):  # the hot path, ahead of the match (see Ledger.apply)
                events = decide(command, now)
                if len(events) == 1 and isinstance(usage := events[0], UsageRecorded):
                    # Nearly every usage: what `take` does with it, without a call per event.
                    apply(usage)
                    append(usage)
                    dirty(usage.user_id)
                    recorded += 1
                    if usage.overshoot or usage.late:
                        self._flagged(usage, batch)
                else:
                    if not events:
                        counters["duplicate"] += 1
                    take(events, batch, dead)
                if confirmed is not None:
                    confirmed.append(command.event_id)
                continue
            match command:
                case AuthorizeRequest():
                    self._authorize(command, message, now, batch, dead, answer)
                case ConfigureUser():
                    take(decide(command, now), batch, dead)
                case RenewReservation():
                    events = decide(command, now)
                    if not events:  # settled, expired or not this user's: a late heartbeat is normal
                        counters["renewal_ignored"] += 1
                    take(events, batch, dead)
                case _:
                    assert_never(command)
        if recorded:
            counters["UsageRecorded"] += recorded
        if dead:
            if rejection is None:
                rejection = Rejection(items=len(decoded.commands), user_id=dead[0].user_id)
            for event in dead:  # (their ids are in `confirmed` already, as commands')
                detail = event.detail if rejection.items == 1 else f"event {event.event_id!r}: {event.detail}"
                rejection.add(event.reason, detail, event.event_id)
        if rejection is not None:
            self._reject(rejection, message, now, batch, answer is None)
        if answer is not None:
            answer.rejection = rejection
            if confirmed is not None:
                answer.confirmed = confirmed
        elif confirmed is not None:
            assert message.response_topic is not None
            self._confirm(message.response_topic, confirmed, batch)

    def internal_error(self, message: Publish, error: Exception, now: datetime, batch: Batch) -> Rejection:
        """A message `handle` raised on (a bug): logged with its traceback and kept as a dead letter, so it
        costs that one message, not the service; the rejection, for a caller that answers it."""
        log.exception("cannot handle a message on %s", message.topic)
        rejection = Rejection()
        rejection.add("internal_error", repr(error))
        self.take([rejection.dead_letter(now, message.topic, message.payload)], batch)
        return rejection

    def take(self, events: list[Event], batch: Batch, dead: list[DeadLettered] | None = None) -> None:
        """Apply decided events and queue what must follow their commit; with `dead`, dead letters are
        collected there instead (to become one per message)."""
        apply, append, dirty = self.ledger.apply, batch.events.append, batch.dirty.add
        counters = self.counters
        for event in events:
            if isinstance(event, UsageRecorded):  # the hot path (see Ledger.apply): only the status to send
                apply(event)
                append(event)
                dirty(event.user_id)
                counters["UsageRecorded"] += 1
                if event.overshoot or event.late:
                    self._flagged(event, batch)
                continue
            if dead is not None and isinstance(event, DeadLettered):
                dead.append(event)
                continue
            apply(event)
            append(event)
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
                    counters[f"dead_letter_{event.reason}"] += 1
                    counters["rejected_items"] += event.count
                    self.throttle.warning(
                        f"dead letter {event.reason}",
                        "dead letter (%s) from %s: %s",
                        event.reason,
                        event.topic,
                        event.detail,
                    )
                    batch.publishes.append((DEADLETTER_TOPIC, encode_event(event)))
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

    def _flagged(self, usage: UsageRecorded, batch: Batch) -> None:
        """Count a late usage; count, log and alert an overshoot (spent past its expired reservation)."""
        if usage.late:
            self.counters["late"] += 1
        if usage.overshoot:
            self.counters["overshoot"] += 1
            self.throttle.warning(
                "overshoot",
                "overshoot: usage %s of %s settled reservation %s after it expired (%s)",
                usage.event_id,
                usage.user_id,
                usage.reservation_id,
                usage.month,
            )
            batch.publishes.append((alert_topic(usage.user_id), overshoot_json(usage)))

    def _reject(
        self, rejection: Rejection, message: Publish, now: datetime, batch: Batch, reply: bool = True
    ) -> None:
        """The message's one dead letter; a deny for a rejected authorization (if `reply`: over HTTP the
        rejection itself is the answer); an unknown-model alert."""
        event = rejection.dead_letter(now, message.topic, message.payload)
        self.take([event], batch)
        if reply and message.topic.startswith(AUTHORIZE_PREFIX):
            reply_to = rejection.reply_to  # checked by the wire
            if reply_to is None and message.response_topic is not None:
                reply_to = self._reply_topic(message.response_topic)
            if reply_to is not None:
                reason = f"{rejection.reason}: {rejection.detail}"
                body = reply_json(rejection.request_id, "deny", None, None, None, reason)
                batch.replies.append((reply_to, body, message.correlation))
        if "unknown_model" in rejection.by_reason and event.user_id:
            batch.publishes.append((alert_topic(event.user_id), unknown_model_json(event, event.user_id)))

    def _authorize(
        self,
        request: AuthorizeRequest,
        message: Publish,
        now: datetime,
        batch: Batch,
        dead: list[DeadLettered],
        answer: Answer | None,
    ) -> None:
        command = request.command
        events = self.ledger.decide(command, now)
        self.take(events, batch, dead)
        granted = next((e for e in events if isinstance(e, ReservationGranted)), None)
        denied = next((e for e in events if isinstance(e, ReservationDenied)), None)
        if granted is None and denied is None:  # a redelivered request: answer with what it already holds
            granted = self.ledger.reservation(reservation_id_for(command.user_id, command.request_id))
        remaining = nanos_to_usd(self.ledger.status(command.user_id, now).remaining_nanos)
        if granted is not None:
            self.counters["granted"] += 1
            if granted.decision == "degrade":
                self.counters["degraded"] += 1
            body = reply_json(
                command.request_id,
                granted.decision,
                granted.model,
                granted.reservation_id,
                remaining,
                "",
                granted.expires_at,
            )
        elif denied is not None:
            self.counters["denied"] += 1
            log.info("deny %s %s: %s", command.user_id, command.model, denied.reason)
            remaining = nanos_to_usd(denied.remaining_nanos)
            body = reply_json(command.request_id, "deny", command.model, None, remaining, denied.reason)
        elif command.expires_at is not None and now > command.expires_at:
            self.counters["authorization_expired"] += 1
            reason = f"decided after its deadline {command.expires_at.isoformat()}; nothing is held"
            body = reply_json(command.request_id, "expired", command.model, None, remaining, reason)
        else:
            body = reply_json(
                command.request_id, "deny", command.model, None, remaining, "not decided; retry"
            )
        if answer is not None:
            answer.reply = body
            return
        reply_to = request.reply_to
        if request.reply_problem is not None:
            self._refuse_reply_topic(request.reply_problem)
        elif reply_to is None and message.response_topic is not None:
            reply_to = self._reply_topic(message.response_topic)
        elif reply_to is None:
            self.counters["no_reply_topic"] += 1
        if reply_to is not None:
            batch.replies.append((reply_to, body, message.correlation))

    def _confirm(self, response_topic: str, event_ids: list[str], batch: Batch) -> None:
        """After the commit, tell the sender which of its usage events are settled (durable or dead)."""
        topic = self._reply_topic(response_topic)
        if topic is None or not event_ids:
            return
        pending = batch.confirms.get(topic)
        if pending is None:
            batch.confirms[topic] = event_ids
        else:
            pending.extend(event_ids)

    def _reply_topic(self, topic: str) -> str | None:
        """A response topic if it is safe to publish to, else None (counted and logged)."""
        problem = reply_topic_problem(topic)
        if problem is None:
            return topic
        self._refuse_reply_topic(problem)
        return None

    def _refuse_reply_topic(self, problem: str) -> None:
        self.counters["bad_reply_topic"] += 1
        self.throttle.warning("bad reply topic", "no reply sent: %s", problem)
