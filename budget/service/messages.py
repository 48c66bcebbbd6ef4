"""The JSON the enforcer publishes: authorization replies, confirmations, retained status, alerts, counters.

Amounts are USD as JSON numbers for people and dashboards; the ledger and the store keep exact integer
nano-dollars, so a rounding here never reaches a sum.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgspec

from budget.domain.commands import UserStatus
from budget.domain.events import DeadLettered, LimitCrossed, UsageRecorded
from budget.domain.prices import nanos_to_usd
from budget.mqtt.topics import reply_topic_problem

_json = msgspec.json.Encoder()


def encode_json(value: Any) -> bytes:
    """Compact JSON."""
    return _json.encode(value)


def safe_reply_topic(topic: str | None) -> str | None:
    """The topic if a reply may be published there (see budget.mqtt.topics.reply_topic_problem), else None."""
    return topic if topic is not None and reply_topic_problem(topic) is None else None


def reply_json(
    request_id: str | None,
    decision: str,
    model: str | None,
    reservation_id: str | None,
    remaining_usd: float | None,
    reason: str,
    expires_at: datetime | None = None,
) -> bytes:
    """An authorization answer: allow / degrade (with the model to use and when its reservation expires
    unless renewed), deny (with why) or expired (decided after the request's deadline: nothing held)."""
    return _json.encode(
        {
            "request_id": request_id,
            "decision": decision,
            "model": model,
            "reservation_id": reservation_id,
            "remaining_usd": remaining_usd,
            "reason": reason,
            "expires_at": expires_at,
        }
    )


MAX_CONFIRM_BYTES = 64 * 1024  # a confirmation stays far below any broker's message size limit


def confirm_json(event_ids: list[str]) -> Iterator[bytes]:
    """`{"confirmed": [...]}` for the usage events a commit settled for one sender: one message, or
    several when the ids would not fit in MAX_CONFIRM_BYTES."""
    start, size = 0, 16  # the braces and the key
    for index, event_id in enumerate(event_ids):
        length = _json_length(event_id) + 1  # and a comma
        if size + length > MAX_CONFIRM_BYTES and index > start:
            yield _json.encode({"confirmed": event_ids[start:index]})
            start, size = index, 16
        size += length
    yield _json.encode({"confirmed": event_ids[start:]})


def _json_length(text: str) -> int:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text) + 2  # no escapes: the text and its quotes
    return len(_json.encode(text))


def status_json(status: UserStatus) -> bytes:
    """A user's retained status on margins/status/<user>."""
    return _json.encode(
        {
            "user_id": status.user_id,
            "month": status.month,
            "spent_usd": nanos_to_usd(status.spent_nanos),
            "reserved_usd": nanos_to_usd(status.reserved_nanos),
            "cap_usd": nanos_to_usd(status.cap_nanos),
            "remaining_usd": nanos_to_usd(status.remaining_nanos),
            "state": status.state,
            "plan": status.plan,
            "timezone": status.timezone,
        }
    )


# Every alert carries an `id` made from its content, the same each time the same thing is alerted (a
# redelivered message, a replayed commit): whoever forwards alerts can recognise one already sent.


def alert_id(kind: str, user_id: str, detail: str) -> str:
    """`kind:user:detail` -- one alert's identity (see alert_json, overshoot_json, unknown_model_json)."""
    return f"{kind}:{user_id}:{detail}"


def alert_json(event: LimitCrossed) -> bytes:
    """A soft-limit or cap alert on margins/alerts/<user> (once per user, month and limit)."""
    return _json.encode(
        {
            "id": alert_id(event.limit, event.user_id, event.month),
            "alert": event.limit,
            "user_id": event.user_id,
            "month": event.month,
            "spent_usd": nanos_to_usd(event.spent_nanos),
            "reserved_usd": nanos_to_usd(event.reserved_nanos),
            "cap_usd": nanos_to_usd(event.cap_nanos),
        }
    )


def overshoot_json(usage: UsageRecorded) -> bytes:
    """An overshoot alert on margins/alerts/<user>: a call outlived its unrenewed reservation, and what it
    spent counted anyway (it was spent), possibly past the cap by at most its own worst case."""
    return _json.encode(
        {
            "id": alert_id("overshoot", usage.user_id, usage.event_id),
            "alert": "overshoot",
            "user_id": usage.user_id,
            "month": usage.month,
            "event_id": usage.event_id,
            "reservation_id": usage.reservation_id,
            "cost_usd": nanos_to_usd(usage.cost_nanos),
        }
    )


def unknown_model_json(dead: DeadLettered, user_id: str) -> bytes:
    """An unknown-model alert on margins/alerts/<user>: usage named a model the price catalog cannot price,
    so it was dead-lettered (never charged $0). Its id is the usage event's id when the message held one
    item, else a digest of the message: the same message dead-lettered again gives the same id."""
    detail = dead.event_id or hashlib.sha256(dead.original_payload()).hexdigest()[:32]
    return _json.encode(
        {
            "id": alert_id("unknown_model", user_id, detail),
            "alert": "unknown_model",
            "user_id": user_id,
            "detail": dead.detail,
        }
    )


def counters_text(counters: Counter[str]) -> str:
    """One log line's worth of counters."""
    return ", ".join(f"{k}={v}" for k, v in sorted(counters.items())) or "nothing handled"
