"""What the ledger is asked (commands) and what it answers about a user (UserStatus), with the pure
helpers both the ledger and its callers need: a user's month, a reservation's id, a call's worst case,
which limits a month's spend has reached."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

import msgspec

from budget.domain.events import DeadLettered, Limit, Outcome, UsageRecorded
from budget.domain.prices import ModelPrice

State = Literal["ok", "soft", "capped"]


class RecordUsage(msgspec.Struct, frozen=True, kw_only=True):
    """A usage report: a model call that happened (it was spent, so it is always recorded if valid).

    `topic` and `payload` are the original message, kept in a dead letter if the report cannot be applied.
    """

    # A msgspec Struct, not a frozen dataclass like the other commands: one is made per usage event, and
    # a frozen dataclass sets each of its 13 fields through object.__setattr__ (~1.8 us an event here).

    event_id: str
    user_id: str
    ts: datetime
    model: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    feature: str = "default"
    reservation_id: str | None = None
    outcome: Outcome = "ok"
    topic: str = ""
    payload: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Authorize:
    """A request to reserve the worst case of one call before making it."""

    request_id: str
    user_id: str
    model: str
    max_input_tokens: int
    max_output_tokens: int
    # When the caller gives up waiting (aware); decided after it, the request holds nothing.
    expires_at: datetime | None = None
    topic: str = ""
    payload: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigureUser:
    """An administrator's change to a user's cap (USD), plan or time zone; None leaves a setting as is."""

    user_id: str
    cap_usd: Decimal | None = None
    plan: str | None = None
    timezone: str | None = None
    topic: str = ""
    payload: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewReservation:
    """A running call's heartbeat: keep its reservation open for another TTL."""

    reservation_id: str
    user_id: str
    topic: str = ""
    payload: bytes | None = None


Command = RecordUsage | Authorize | ConfigureUser | RenewReservation


@dataclass(frozen=True, slots=True)
class UserStatus:
    """A user's month at a glance; `remaining_nanos` = cap - spent - reserved, never below 0."""

    user_id: str
    month: str
    spent_nanos: int
    reserved_nanos: int
    cap_nanos: int
    remaining_nanos: int
    state: State
    plan: str | None = None
    timezone: str = "UTC"


def reservation_id_for(user_id: str, request_id: str) -> str:
    """The reservation id of a user's request: derived, so a replay and a redelivery name it alike."""
    digest = hashlib.blake2b(f"{user_id}\x1f{request_id}".encode(), digest_size=12).hexdigest()
    return f"r-{digest}"


def worst_case_nanos(price: ModelPrice, max_input_tokens: int, max_output_tokens: int) -> int:
    """The most a call can cost: every prompt token at the dearest input rate (a cache write can cost more
    than plain input), every allowed output token, at the dearest tier a prompt of `max_input_tokens`
    tokens can reach (a prompt past 200k tokens makes a tiered model dearer on every token)."""
    per_input, per_output = price.worst_rates(max_input_tokens)
    return max_input_tokens * per_input + max_output_tokens * per_output


def state_of(spent: int, reserved: int, cap: int, soft_threshold_pct: int) -> State:
    """ "capped" once settled + reserved spend reaches the cap (no call fits any more), "soft" once settled
    spend reaches the soft threshold, else "ok"."""
    if spent + reserved >= cap:
        return "capped"
    if spent >= cap * soft_threshold_pct // 100:
        return "soft"
    return "ok"


def limits_reached(spent: int, reserved: int, cap: int, soft_threshold_pct: int) -> list[Limit]:
    """The limits a user-month has reached: "soft" when settled spend reaches the soft threshold (money
    spent, not a worst case held for a call), "cap" when settled + reserved spend reaches the cap (what
    authorizations are checked against). Nothing is reached while nothing is spent or held, so a $0 cap is
    not announced as crossed before anything is committed."""
    reached: list[Limit] = []
    if spent > 0 and spent >= cap * soft_threshold_pct // 100:
        reached.append("soft")
    if spent + reserved > 0 and spent + reserved >= cap:
        reached.append("cap")
    return reached


def describe(command: Command) -> bytes:
    """A JSON rendering of a command, kept in a dead letter when the original payload was not passed in."""
    names = command.__struct_fields__ if isinstance(command, RecordUsage) else command.__slots__
    return msgspec.json.encode({name: getattr(command, name) for name in names if name != "payload"})


def usage_event(
    command: RecordUsage, cost_nanos: int, month: str, *, late: bool = False, overshoot: bool = False
) -> UsageRecorded:
    """The UsageRecorded a valid usage report becomes, priced and placed in its month (see the month rule
    in budget.domain.ledger for `late` and `overshoot`)."""
    return UsageRecorded(
        event_id=command.event_id,
        user_id=command.user_id,
        ts=command.ts,
        model=command.model,
        input_tokens=command.input_tokens,
        output_tokens=command.output_tokens,
        cost_nanos=cost_nanos,
        cached_input_tokens=command.cached_input_tokens,
        cache_write_tokens=command.cache_write_tokens,
        feature=command.feature,
        outcome=command.outcome,
        reservation_id=command.reservation_id,
        month=month,
        late=late,
        overshoot=overshoot,
    )


def dead_letter(
    command: Command, now: datetime, reason: str, detail: str, event_id: str | None = None
) -> DeadLettered:
    """A command that cannot be applied, with its original payload (or its JSON rendering)."""
    payload = command.payload if command.payload is not None else describe(command)
    return DeadLettered.of(
        ts=now,
        topic=command.topic,
        payload=payload,
        reason=reason,
        detail=detail,
        user_id=command.user_id,
        event_id=event_id,
    )
