"""The event model both sides share: what costs money is a UsageRecorded event.

Events are frozen, carry a schema version (`v`) and have one JSON form. The simulator emits the same
UsageRecorded events as production; the enforcer folds them into ledgers; the store keeps them. Cost is
computed from the price catalog when the event is made and stored with it, so a later price change never
rewrites history.

The other events tell the rest of the enforcer's story: reservations granted, denied and expired (a
reservation is settled by the UsageRecorded that carries its `reservation_id`), user configuration, limits
crossed and dead letters. Every event is a tagged msgspec Struct; `Event` is their union and
`encode_event` / `decode_event` give the tagged JSON form (`{"type": "usage_recorded", ...}`).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Literal, TypeAlias

import msgspec

from budget.errors import PayloadEncodingError

USAGE_SCHEMA_VERSION = 2  # 2 added `late` and `overshoot`; a v1 event reads with both False
EVENT_SCHEMA_VERSION = 1

Outcome = Literal["ok", "error", "timeout", "aborted", "rate_limited", "cache_hit"]
CacheLayer = Literal["exact", "semantic", "fragment"]


class UsageRecorded(msgspec.Struct, frozen=True, kw_only=True, tag="usage_recorded"):
    """One billed (or cache-served) model call.

    `input_tokens` counts every prompt token; `cached_input_tokens` and `cache_write_tokens` say how many
    of them the provider's prompt cache served or stored. `cost_nanos` is exact, in 1e-9 USD.
    """

    event_id: str
    user_id: str
    ts: datetime
    model: str
    input_tokens: int
    output_tokens: int
    cost_nanos: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    feature: str = "default"
    outcome: Outcome = "ok"
    cache_layer: CacheLayer | None = None
    reservation_id: str | None = None
    # The calendar month (user's time zone, "YYYY-MM") the enforcer counted this usage in; stored so a
    # later time-zone change never moves history. None when the producer did not fold it (forecasts).
    month: str | None = None
    # Optional: a hash of the prompt (never the prompt), so `margins fit` can measure how often prompts
    # repeat; None when the producer does not send it.
    prompt_hash: str | None = None
    # Counted in the month it arrived in, because its own month had closed (see budget.domain.ledger).
    late: bool = False
    # Its reservation had expired before it arrived: spent past the hold that covered it.
    overshoot: bool = False
    v: int = USAGE_SCHEMA_VERSION


# The usage table: one row per UsageRecorded, identical for forecasts and live spend so one SQL query
# answers "what did we spend" and "what would we have spent". `source` says which: "live" for the
# enforcer, "sim:<scenario>" for a forecast; `run_id` tells forecast runs apart ("" when live).
USAGE_COLUMNS: dict[str, str] = {
    "event_id": "VARCHAR",
    "user_id": "VARCHAR",
    "ts": "TIMESTAMPTZ",
    "month": "VARCHAR",
    "model": "VARCHAR",
    "feature": "VARCHAR",
    "input_tokens": "BIGINT",
    "cached_input_tokens": "BIGINT",
    "cache_write_tokens": "BIGINT",
    "output_tokens": "BIGINT",
    "outcome": "VARCHAR",
    "cache_layer": "VARCHAR",
    "reservation_id": "VARCHAR",
    "cost_nanos": "BIGINT",
    "source": "VARCHAR",
    "run_id": "VARCHAR",
}

Decision = Literal["allow", "degrade"]
Limit = Literal["soft", "cap"]
PayloadEncoding = Literal["utf-8", "base64"]


class ReservationGranted(msgspec.Struct, frozen=True, kw_only=True, tag="reservation_granted"):
    """An authorization answered allow or degrade: `amount_nanos` (the worst case of `model`) is held
    against the user's `month` until a usage with this `reservation_id` settles it or it expires at
    `expires_at`. `model` is the model granted (the cheaper one on degrade); `requested_model` what was asked.
    """

    reservation_id: str
    request_id: str
    user_id: str
    ts: datetime
    month: str
    decision: Decision
    model: str
    requested_model: str
    amount_nanos: int
    expires_at: datetime
    v: int = EVENT_SCHEMA_VERSION


class ReservationRenewed(msgspec.Struct, frozen=True, kw_only=True, tag="reservation_renewed"):
    """A running call's client renewed its reservation: it now expires at `expires_at`."""

    reservation_id: str
    user_id: str
    ts: datetime
    expires_at: datetime
    v: int = EVENT_SCHEMA_VERSION


class ReservationDenied(msgspec.Struct, frozen=True, kw_only=True, tag="reservation_denied"):
    """An authorization answered deny; it holds nothing. `amount_nanos` is the worst case that did not fit
    (0 when it could not be priced), `remaining_nanos` what the user had left, `reason` why in words."""

    request_id: str
    user_id: str
    ts: datetime
    month: str
    model: str
    amount_nanos: int
    remaining_nanos: int
    reason: str
    v: int = EVENT_SCHEMA_VERSION


class ReservationExpired(msgspec.Struct, frozen=True, kw_only=True, tag="reservation_expired"):
    """A reservation not settled within its TTL: its `amount_nanos` returns to the user's `month`."""

    reservation_id: str
    user_id: str
    ts: datetime
    month: str
    amount_nanos: int
    v: int = EVENT_SCHEMA_VERSION


class UserConfigured(msgspec.Struct, frozen=True, kw_only=True, tag="user_configured"):
    """An administrator set a user's cap, plan or time zone; a None field leaves that setting unchanged."""

    user_id: str
    ts: datetime
    cap_nanos: int | None = None
    plan: str | None = None
    timezone: str | None = None
    v: int = EVENT_SCHEMA_VERSION


class LimitCrossed(msgspec.Struct, frozen=True, kw_only=True, tag="limit_crossed"):
    """A user-month reached a limit: "soft" when settled spend reached the soft threshold, "cap" when
    settled + reserved spend reached the cap (no call fits any more); emitted at most once per (user,
    month, limit)."""

    user_id: str
    ts: datetime
    month: str
    limit: Limit
    spent_nanos: int
    reserved_nanos: int
    cap_nanos: int
    v: int = EVENT_SCHEMA_VERSION


class DeadLettered(msgspec.Struct, frozen=True, kw_only=True, tag="dead_lettered"):
    """Input that could not be applied, kept losslessly with the reason; it never touches a ledger.

    `payload` is the original bytes as UTF-8 text, or base64 when they are not UTF-8 (`payload_encoding`
    says which; `original_payload()` gives the bytes back). `user_id` and `event_id` are filled when known.
    """

    ts: datetime
    topic: str
    payload: str
    reason: str
    payload_encoding: PayloadEncoding = "utf-8"
    detail: str = ""
    user_id: str | None = None
    event_id: str | None = None
    # How many items of the message were rejected (one dead letter per message, whatever it held).
    count: int = 1
    v: int = EVENT_SCHEMA_VERSION

    @classmethod
    def of(
        cls,
        *,
        ts: datetime,
        topic: str,
        payload: bytes,
        reason: str,
        detail: str = "",
        user_id: str | None = None,
        event_id: str | None = None,
        count: int = 1,
    ) -> DeadLettered:
        """A dead letter keeping `payload` exactly: as text when it is UTF-8, else base64."""
        encoding: PayloadEncoding = "utf-8"
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
        return cls(
            ts=ts,
            topic=topic,
            payload=text,
            payload_encoding=encoding,
            reason=reason,
            detail=detail,
            user_id=user_id,
            event_id=event_id,
            count=count,
        )

    def original_payload(self) -> bytes:
        """The bytes that were received."""
        if self.payload_encoding == "base64":
            try:
                return base64.b64decode(self.payload, validate=True)
            except binascii.Error as error:
                raise PayloadEncodingError("base64", str(error)) from error
        return self.payload.encode("utf-8")


Event: TypeAlias = (
    UsageRecorded
    | ReservationGranted
    | ReservationRenewed
    | ReservationDenied
    | ReservationExpired
    | UserConfigured
    | LimitCrossed
    | DeadLettered
)
EVENT_TYPES: tuple[type[Event], ...] = (
    UsageRecorded,
    ReservationGranted,
    ReservationRenewed,
    ReservationDenied,
    ReservationExpired,
    UserConfigured,
    LimitCrossed,
    DeadLettered,
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageRecorded)
_event_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode_usage(event: UsageRecorded) -> bytes:
    """The JSON form of a UsageRecorded event."""
    return _encoder.encode(event)


def decode_usage(data: bytes | str) -> UsageRecorded:
    """Parse the JSON form; raises msgspec.ValidationError / DecodeError on bad input."""
    return _decoder.decode(data)


def encode_event(event: Event) -> bytes:
    """The tagged JSON form of any event: `{"type": "<tag>", ..., "v": <its schema version>}`."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    """Parse the tagged JSON form; raises msgspec.ValidationError / DecodeError on bad input.

    UsageRecorded is at schema version 2 (a v1 usage reads with `late` and `overshoot` False), every other
    type at 1; an older version is upcast here, never rewritten in the store.
    """
    return _event_decoder.decode(data)


def event_tag(event: Event) -> str:
    """The tag that names an event's type in JSON and in the store ("usage_recorded", ...)."""
    return event_tag_of(type(event))


def event_tag_of(kind: type[Event]) -> str:
    """The tag of an event type."""
    return str(kind.__struct_config__.tag)
