"""The wire format: MQTT topics and JSON payloads -> ledger commands, or rejections with a precise reason.

Pure (no IO, no clock: `now` is passed in). Whatever bytes arrive, `decode_message` returns; it never
raises. Each payload becomes zero or more commands plus zero or more `Rejected` entries: a JSON array of
usage events is judged element by element, so the good ones apply and each bad one is dead-lettered.

Decoding is strict on purpose: a float where an int belongs, a naive timestamp, or a negative token count
is a rejection, not a guess, because a guessed number in a ledger is money made up. The one fast path is a
well-formed payload (one typed msgspec decode); only a payload that fails it pays for the generic parse
that finds which element and which field is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from budget.domain.events import Outcome
from budget.domain.ledger import Authorize, ConfigureUser, RecordUsage
from budget.errors import TopicError
from budget.mqtt.topics import ADMIN_PREFIX, AUTHORIZE_PREFIX, USAGE_PREFIX, reply_topic_problem

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_TOKENS = 10_000_000  # more than any model's context + output; beyond it a count is a bug, not a call
DEFAULT_MAX_SKEW = timedelta(minutes=5)
# A usage ts outside these years is a bug or an attack, never a call: it is rejected before the ledger
# works out its month (which datetime cannot do near the years 1 and 9999).
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_TS = datetime(2200, 1, 1, tzinfo=UTC)
MAX_CAP_USD = Decimal(1_000_000)  # a cap above a million dollars a month per user is a typo

Reason = Literal[
    "too_large",
    "not_utf8",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "user_mismatch",
    "future_timestamp",
    "bad_topic",
    "bad_reply_topic",
    "bad_timezone",
    "empty",
    "internal_error",
]

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Tokens = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]
_AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


class _UsageIn(msgspec.Struct, frozen=True):
    event_id: _Id
    user_id: _Id
    ts: _AwareTime
    model: _Name
    input_tokens: _Tokens
    output_tokens: _Tokens
    cached_input_tokens: _Tokens = 0
    feature: _Name = "default"
    reservation_id: _Id | None = None
    outcome: Outcome = "ok"


class _AuthorizeIn(msgspec.Struct, frozen=True):
    request_id: _Id
    user_id: _Id
    model: _Name
    max_input_tokens: _Tokens
    max_output_tokens: _Tokens
    reply_to: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None


class _AdminIn(msgspec.Struct, frozen=True):
    user_id: _Id | None = None
    cap_usd: Decimal | None = None
    plan: _Name | None = None
    timezone: _Name | None = None


_usage_decoder = msgspec.json.Decoder(_UsageIn | list[_UsageIn])
_authorize_decoder = msgspec.json.Decoder(_AuthorizeIn)
_admin_decoder = msgspec.json.Decoder(_AdminIn)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Rejected:
    """Something that cannot be applied: why (`reason`, a stable code; `detail`, for people) and what.

    `payload` is the original bytes, or for one bad element of an array that element re-encoded.
    `request_id` / `reply_to` are salvaged from a bad authorization so its sender gets a deny, not a timeout;
    `reply_to` is set only if it passed `reply_topic_problem`.
    """

    reason: Reason
    detail: str
    payload: bytes
    user_id: str | None = None
    request_id: str | None = None
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    """An Authorize command and where its answer goes (`reply_to` from the payload, already checked by
    `reply_topic_problem`; may be None for MQTT 5 senders, who give a response topic as a property
    instead)."""

    command: Authorize
    reply_to: str | None


Command = RecordUsage | AuthorizeRequest | ConfigureUser


@dataclass(slots=True)
class Decoded:
    """What one MQTT message holds: the commands to decide, and the parts to dead-letter."""

    commands: list[Command] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def decode_message(
    topic: str, payload: bytes, now: datetime, max_skew: timedelta = DEFAULT_MAX_SKEW
) -> Decoded:
    """Decode one message by its topic; never raises. `now` (aware) bounds how far ahead a ts may be."""
    try:
        if len(payload) > MAX_PAYLOAD_BYTES:
            return _one(
                "too_large", f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}", payload
            )
        if topic.startswith(USAGE_PREFIX):
            return decode_usage(_topic_user(topic, USAGE_PREFIX), payload, now, max_skew, topic)
        if topic.startswith(AUTHORIZE_PREFIX):
            return decode_authorize(_topic_user(topic, AUTHORIZE_PREFIX), payload, topic)
        if topic.startswith(ADMIN_PREFIX):
            return decode_admin(_topic_user(topic, ADMIN_PREFIX), payload, topic)
        return _one("bad_topic", f"no margins command is published on {topic!r}", payload)
    except TopicError as error:
        return _one("bad_topic", str(error), payload)
    except Exception as error:  # a decoder must not take the enforcer down, whatever the bytes
        return _one("malformed_json", f"undecodable payload ({type(error).__name__})", payload)


def decode_usage(
    topic_user: str,
    payload: bytes,
    now: datetime,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
    topic: str = "",
) -> Decoded:
    """A usage payload (one object or an array of them) -> RecordUsage commands and rejections."""
    try:
        parsed = _usage_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        return _usage_slow_path(error, topic_user, payload, now, max_skew, topic)
    out = Decoded()
    if isinstance(parsed, list):
        if not parsed:
            out.rejected.append(Rejected("empty", "an empty array carries no usage", payload, topic_user))
        for item in parsed:
            _judge_usage(item, topic_user, now, max_skew, None, topic, out)
    else:
        _judge_usage(parsed, topic_user, now, max_skew, payload, topic, out)
    return out


def decode_authorize(topic_user: str, payload: bytes, topic: str = "") -> Decoded:
    """An authorization request -> one AuthorizeRequest, or a rejection (with whatever reply address
    could be salvaged)."""
    try:
        req = _authorize_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        rejected = _classify(error, payload, topic_user)
        generic = _generic(payload)
        if isinstance(generic, dict):
            rejected = _authorize_rejected(
                rejected.reason,
                rejected.detail,
                payload,
                topic_user,
                generic.get("request_id"),
                generic.get("reply_to"),
            )
        return Decoded(rejected=[rejected])
    bad: tuple[Reason, str] | None = None
    if req.user_id != topic_user:
        bad = ("user_mismatch", f"payload user_id {req.user_id!r} differs from topic user {topic_user!r}")
    elif req.reply_to is not None and (problem := reply_topic_problem(req.reply_to)):
        bad = ("bad_reply_topic", problem)
    if bad is not None:
        return Decoded(
            rejected=[_authorize_rejected(bad[0], bad[1], payload, topic_user, req.request_id, req.reply_to)]
        )
    command = Authorize(
        request_id=req.request_id,
        user_id=req.user_id,
        model=req.model,
        max_input_tokens=req.max_input_tokens,
        max_output_tokens=req.max_output_tokens,
        topic=topic,
        payload=payload,
    )
    return Decoded(commands=[AuthorizeRequest(command, req.reply_to)])


def decode_admin(topic_user: str, payload: bytes, topic: str = "") -> Decoded:
    """A user's settings (cap_usd, plan, timezone; each optional) -> one ConfigureUser, or a rejection."""
    try:
        req = _admin_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        return Decoded(rejected=[_classify(error, payload, topic_user)])
    problem: tuple[Reason, str] | None = None
    if req.user_id is not None and req.user_id != topic_user:
        problem = ("user_mismatch", f"payload user_id {req.user_id!r} differs from topic user {topic_user!r}")
    elif req.cap_usd is not None and not (req.cap_usd.is_finite() and 0 <= req.cap_usd <= MAX_CAP_USD):
        problem = ("out_of_range", f"cap_usd must be between 0 and {MAX_CAP_USD}, got {req.cap_usd}")
    elif req.timezone is not None and not _known_zone(req.timezone):
        problem = ("bad_timezone", f"unknown IANA time zone {req.timezone!r} - at `$.timezone`")
    if problem is not None:
        return Decoded(rejected=[Rejected(problem[0], problem[1], payload, topic_user)])
    command = ConfigureUser(
        user_id=topic_user,
        cap_usd=req.cap_usd,
        plan=req.plan,
        timezone=req.timezone,
        topic=topic,
        payload=payload,
    )
    return Decoded(commands=[command])


def _authorize_rejected(
    reason: Reason, detail: str, payload: bytes, topic_user: str, request_id: object, reply_to: object
) -> Rejected:
    """A rejected authorization with what could be salvaged of its request id and reply address: the one
    place a reject's reply topic is checked, so every reject (whatever its reason) keeps only a safe one."""
    return Rejected(
        reason,
        detail,
        payload,
        topic_user,
        request_id if isinstance(request_id, str) else None,
        reply_to if isinstance(reply_to, str) and reply_topic_problem(reply_to) is None else None,
    )


def _topic_user(topic: str, prefix: str) -> str:
    user = topic[len(prefix) :]
    if not user or "/" in user or len(user) > 256:
        raise TopicError(topic, prefix)
    return user


def _one(reason: Reason, detail: str, payload: bytes, user: str | None = None) -> Decoded:
    return Decoded(rejected=[Rejected(reason, detail, payload, user)])


def _judge_usage(
    item: _UsageIn,
    topic_user: str,
    now: datetime,
    max_skew: timedelta,
    payload: bytes | None,
    topic: str,
    out: Decoded,
) -> None:
    """Check what types cannot (topic user, cached <= input, clock skew); `payload` is the message when
    it held this one item (kept for a dead letter), None for an array element."""
    problem: tuple[Reason, str] | None = None
    if item.user_id != topic_user:
        problem = (
            "user_mismatch",
            f"payload user_id {item.user_id!r} differs from topic user {topic_user!r}",
        )
    elif item.cached_input_tokens > item.input_tokens:
        problem = (
            "out_of_range",
            f"cached_input_tokens {item.cached_input_tokens} exceeds input_tokens {item.input_tokens}",
        )
    elif not EARLIEST_TS <= item.ts < LATEST_TS:
        problem = ("out_of_range", f"ts {item.ts.isoformat()} is not between the years 2000 and 2199")
    elif item.ts > now + max_skew:
        problem = ("future_timestamp", f"ts {item.ts.isoformat()} is more than {max_skew} ahead of {now}")
    if problem is not None:
        raw = payload if payload is not None else _encoder.encode(item)
        out.rejected.append(Rejected(problem[0], problem[1], raw, topic_user))
        return
    out.commands.append(
        RecordUsage(
            event_id=item.event_id,
            user_id=item.user_id,
            ts=item.ts,
            model=item.model,
            input_tokens=item.input_tokens,
            cached_input_tokens=item.cached_input_tokens,
            output_tokens=item.output_tokens,
            feature=item.feature,
            reservation_id=item.reservation_id,
            outcome=item.outcome,
            topic=topic,
            payload=payload,
        )
    )


def _usage_slow_path(
    error: Exception, topic_user: str, payload: bytes, now: datetime, max_skew: timedelta, topic: str
) -> Decoded:
    """The typed decode failed with `error`: find out whether the whole payload is bad or only some array
    elements."""
    generic = _generic(payload)
    if not isinstance(generic, list):
        return Decoded(rejected=[_classify(error, payload, topic_user)])
    out = Decoded()
    if not generic:
        out.rejected.append(Rejected("empty", "an empty array carries no usage", payload, topic_user))
    for index, element in enumerate(generic):
        raw = _encoder.encode(element)
        try:
            item = msgspec.convert(element, _UsageIn)
        except msgspec.ValidationError as error:
            rejected = _classify(error, raw, topic_user)
            detail = rejected.detail.replace("`$", f"`$[{index}]", 1)
            out.rejected.append(Rejected(rejected.reason, f"element {index}: {detail}", raw, topic_user))
            continue
        _judge_usage(item, topic_user, now, max_skew, raw, topic, out)
    return out


def _generic(payload: bytes) -> Any:
    try:
        return _any_decoder.decode(payload)
    except Exception:
        return None


def _classify(error: BaseException, payload: bytes, user: str | None) -> Rejected:
    text = str(error)
    reason: Reason
    if isinstance(error, UnicodeDecodeError) or _not_utf8(payload):
        reason, text = "not_utf8", f"payload is not valid UTF-8: {text}"
    elif not isinstance(error, msgspec.ValidationError):  # ValidationError subclasses DecodeError
        reason = "malformed_json"
    elif "missing required field" in text:
        reason = "missing_field"
    elif text.startswith(("Expected `object`", "Expected `object | array`", "Expected `array | object`")):
        reason = "not_an_object"
    elif ">=" in text or "<=" in text or "length" in text:
        reason = "out_of_range"
    else:
        reason = "wrong_type"
    return Rejected(reason, text, payload, user)


def _not_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@lru_cache(maxsize=1024)
def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True
