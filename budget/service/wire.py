"""The wire format: MQTT topics and JSON payloads -> ledger commands, or rejections with a precise reason.

Pure (no IO, no clock: `now` is passed in). Whatever bytes arrive, `decode_message` returns; it never
raises. Each payload becomes zero or more commands plus at most one `Rejection` (budget.service.rejection):
a JSON array of usage events is judged item by item, so the good ones apply, and however many are bad the
message is one dead letter that counts them.

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
from budget.domain.ledger import Authorize, ConfigureUser, RecordUsage, RenewReservation
from budget.errors import TopicError
from budget.mqtt.topics import (
    ADMIN_PREFIX,
    AUTHORIZE_PREFIX,
    RENEW_PREFIX,
    USAGE_PREFIX,
    reply_topic_problem,
)
from budget.service.rejection import Rejection

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
    cache_write_tokens: _Tokens = 0
    feature: _Name = "default"
    reservation_id: _Id | None = None
    outcome: Outcome = "ok"


class _AuthorizeIn(msgspec.Struct, frozen=True):
    request_id: _Id
    user_id: _Id
    model: _Name
    max_input_tokens: _Tokens
    max_output_tokens: _Tokens
    reply_to: str | None = None  # checked by reply_topic_problem, which says what is wrong with it
    expires_at: _AwareTime | None = None


class _RenewIn(msgspec.Struct, frozen=True):
    reservation_id: _Id
    user_id: _Id


class _AdminIn(msgspec.Struct, frozen=True):
    user_id: _Id | None = None
    cap_usd: Decimal | None = None
    plan: _Name | None = None
    timezone: _Name | None = None


_usage_decoder = msgspec.json.Decoder(_UsageIn | list[_UsageIn])
_authorize_decoder = msgspec.json.Decoder(_AuthorizeIn)
_admin_decoder = msgspec.json.Decoder(_AdminIn)
_renew_decoder = msgspec.json.Decoder(_RenewIn)
_any_decoder = msgspec.json.Decoder()


class _Addressed(msgspec.Struct):
    user_id: str


_addressed_decoder = msgspec.json.Decoder(_Addressed | list[_Addressed])
_DecodeErrors = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError)


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    """An Authorize command and where its answer goes: `reply_to` from the payload (MQTT 3.1.1 senders;
    None for MQTT 5 ones, who give a response topic as a property instead). A `reply_to` that is not a
    safe reply topic is dropped and `reply_problem` says why: the request is still decided, and not
    answered."""

    command: Authorize
    reply_to: str | None
    reply_problem: str | None = None


Command = RecordUsage | AuthorizeRequest | ConfigureUser | RenewReservation


@dataclass(slots=True)
class Decoded:
    """What one MQTT message holds: the commands to decide, and the rejected part (None if nothing)."""

    commands: list[Command] = field(default_factory=list)
    rejection: Rejection | None = None


def decode_message(
    topic: str,
    payload: bytes,
    now: datetime,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
    message_expiry_s: int | None = None,
) -> Decoded:
    """Decode one message by its topic; never raises. `now` (aware) bounds how far ahead a ts may be;
    `message_expiry_s` is the MQTT 5 message expiry interval left on an authorization request."""
    user: str | None = None
    try:
        # one startswith per kind, usage first: a generator over the prefixes costs as much again
        if topic.startswith(USAGE_PREFIX):
            kind = USAGE_PREFIX
        elif topic.startswith(AUTHORIZE_PREFIX):
            kind = AUTHORIZE_PREFIX
        elif topic.startswith(RENEW_PREFIX):
            kind = RENEW_PREFIX
        elif topic.startswith(ADMIN_PREFIX):
            kind = ADMIN_PREFIX
        else:
            return _one("bad_topic", f"no margins command is published on {topic!r}")
        user = _topic_user(topic, kind)
        if len(payload) > MAX_PAYLOAD_BYTES:
            detail = f"payload is {len(payload):,} bytes; the limit is {MAX_PAYLOAD_BYTES:,}"
            return _one("too_large", detail, user)
        if kind is USAGE_PREFIX:
            return decode_usage(user, payload, now, max_skew, topic)
        if kind is AUTHORIZE_PREFIX:
            return decode_authorize(user, payload, topic, now, message_expiry_s)
        if kind is RENEW_PREFIX:
            return decode_renew(user, payload, topic)
        return decode_admin(user, payload, topic)
    except TopicError as error:
        return _one("bad_topic", str(error))
    except Exception as error:  # a decoder must not take the enforcer down, whatever the bytes
        return _one("malformed_json", f"undecodable payload ({type(error).__name__})", user)


def named_user(payload: bytes) -> str | None:
    """The user a request body speaks for: its `user_id` (an array's: the first item that has one), or
    None when no item names one. Over MQTT the topic names the user; a body sent without a topic (over
    HTTP) is decoded as if published on its user's topic, so it is judged exactly alike."""
    try:
        parsed = _addressed_decoder.decode(payload)
    except _DecodeErrors:
        generic = _generic(payload)
        items = generic if isinstance(generic, list) else [generic]
        named = (i["user_id"] for i in items if type(i) is dict and type(i.get("user_id")) is str)
        user: str | None = next(named, None)
        return user
    if isinstance(parsed, list):
        return parsed[0].user_id if parsed else None
    user_id: str = parsed.user_id
    return user_id


def decode_addressed(
    prefix: str, payload: bytes, now: datetime, max_skew: timedelta = DEFAULT_MAX_SKEW
) -> tuple[str, Decoded]:
    """A usage or authorization body that came without a topic: the topic it would have been published on
    (`prefix` + its user), and what `decode_message` makes of it there. A body naming no user (malformed
    JSON, no `user_id` anywhere) is judged with no topic user: its rejection is the one MQTT would give."""
    user = named_user(payload)
    if user is not None:
        topic = prefix + user
        return topic, decode_message(topic, payload, now, max_skew)
    if len(payload) > MAX_PAYLOAD_BYTES:
        detail = f"payload is {len(payload):,} bytes; the limit is {MAX_PAYLOAD_BYTES:,}"
        return prefix, _one("too_large", detail)
    if prefix == USAGE_PREFIX:
        return prefix, decode_usage(None, payload, now, max_skew, prefix)
    return prefix, decode_authorize(None, payload, prefix, now)


def decode_usage(
    topic_user: str | None,
    payload: bytes,
    now: datetime,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
    topic: str = "",
) -> Decoded:
    """A usage payload (one object or an array of them) -> RecordUsage commands and the rejected items."""
    try:
        parsed = _usage_decoder.decode(payload)
    except _DecodeErrors as error:
        return _usage_slow_path(error, topic_user, payload, now, max_skew, topic)
    out = Decoded()
    if isinstance(parsed, list):
        if not parsed:
            return _one("empty", "an empty array carries no usage", topic_user)
        for index, item in enumerate(parsed):
            _judge_usage(item, index, len(parsed), topic_user, now, max_skew, None, topic, out)
    else:
        _judge_usage(parsed, None, 1, topic_user, now, max_skew, payload, topic, out)
    return out


def decode_authorize(
    topic_user: str | None,
    payload: bytes,
    topic: str = "",
    now: datetime | None = None,
    message_expiry_s: int | None = None,
) -> Decoded:
    """An authorization request -> one AuthorizeRequest, or a rejection (with whatever request id and
    reply address could be salvaged). Its deadline is the earlier of the payload's `expires_at` and
    `now` + the message expiry interval left."""
    try:
        req = _authorize_decoder.decode(payload)
    except _DecodeErrors as error:
        rejection = _classify(error, payload, topic_user)
        generic = _generic(payload)
        if isinstance(generic, dict):
            _salvage(rejection, generic.get("request_id"), generic.get("reply_to"))
        return Decoded(rejection=rejection)
    if req.user_id != topic_user:
        rejection = _rejection(
            "user_mismatch",
            f"payload user_id {req.user_id!r} differs from topic user {topic_user!r}",
            topic_user,
        )
        _salvage(rejection, req.request_id, req.reply_to)
        return Decoded(rejection=rejection)
    expires_at = req.expires_at
    if message_expiry_s is not None and now is not None:
        by_expiry = now + timedelta(seconds=message_expiry_s)
        expires_at = by_expiry if expires_at is None else min(expires_at, by_expiry)
    command = Authorize(
        request_id=req.request_id,
        user_id=req.user_id,
        model=req.model,
        max_input_tokens=req.max_input_tokens,
        max_output_tokens=req.max_output_tokens,
        expires_at=expires_at,
        topic=topic,
        payload=payload,
    )
    problem = None if req.reply_to is None else reply_topic_problem(req.reply_to)
    reply_to = req.reply_to if problem is None else None
    return Decoded(commands=[AuthorizeRequest(command, reply_to, problem)])


def decode_renew(topic_user: str, payload: bytes, topic: str = "") -> Decoded:
    """A running call's heartbeat `{"reservation_id", "user_id"}` -> one RenewReservation, or a rejection."""
    try:
        req = _renew_decoder.decode(payload)
    except _DecodeErrors as error:
        return Decoded(rejection=_classify(error, payload, topic_user))
    if req.user_id != topic_user:
        detail = f"payload user_id {req.user_id!r} differs from topic user {topic_user!r}"
        return _one("user_mismatch", detail, topic_user)
    command = RenewReservation(
        reservation_id=req.reservation_id, user_id=req.user_id, topic=topic, payload=payload
    )
    return Decoded(commands=[command])


def decode_admin(topic_user: str, payload: bytes, topic: str = "") -> Decoded:
    """A user's settings (cap_usd, plan, timezone; each optional) -> one ConfigureUser, or a rejection."""
    try:
        req = _admin_decoder.decode(payload)
    except _DecodeErrors as error:
        return Decoded(rejection=_classify(error, payload, topic_user))
    problem: tuple[Reason, str] | None = None
    if req.user_id is not None and req.user_id != topic_user:
        problem = ("user_mismatch", f"payload user_id {req.user_id!r} differs from topic user {topic_user!r}")
    elif req.cap_usd is not None and not (req.cap_usd.is_finite() and 0 <= req.cap_usd <= MAX_CAP_USD):
        problem = ("out_of_range", f"cap_usd must be between 0 and {MAX_CAP_USD}, got {req.cap_usd}")
    elif req.timezone is not None and not _known_zone(req.timezone):
        problem = ("bad_timezone", f"unknown IANA time zone {req.timezone!r} - at `$.timezone`")
    if problem is not None:
        return _one(problem[0], problem[1], topic_user)
    command = ConfigureUser(
        user_id=topic_user,
        cap_usd=req.cap_usd,
        plan=req.plan,
        timezone=req.timezone,
        topic=topic,
        payload=payload,
    )
    return Decoded(commands=[command])


def _salvage(rejection: Rejection, request_id: object, reply_to: object) -> None:
    """Keep what a rejected authorization's deny can be sent with: the one place a reject's reply topic
    is checked, so every reject (whatever its reason) keeps only a safe one."""
    rejection.request_id = request_id if isinstance(request_id, str) else None
    if isinstance(reply_to, str) and reply_topic_problem(reply_to) is None:
        rejection.reply_to = reply_to


def _topic_user(topic: str, prefix: str) -> str:
    user = topic[len(prefix) :]
    if not user or "/" in user or len(user) > 256:
        raise TopicError(topic, prefix)
    return user


def _rejection(reason: Reason, detail: str, user: str | None = None, items: int = 1) -> Rejection:
    rejection = Rejection(items=items, user_id=user)
    rejection.add(reason, detail)
    return rejection


def _one(reason: Reason, detail: str, user: str | None = None) -> Decoded:
    return Decoded(rejection=_rejection(reason, detail, user))


def _judge_usage(
    item: _UsageIn,
    index: int | None,
    items: int,
    topic_user: str | None,
    now: datetime,
    max_skew: timedelta,
    payload: bytes | None,
    topic: str,
    out: Decoded,
) -> None:
    """Check what types cannot (topic user, cached <= input, clock skew). `index` is the item's place in
    an array (None for a lone object); `payload` is the message when it held this one item."""
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
    elif item.cached_input_tokens + item.cache_write_tokens > item.input_tokens:
        problem = (
            "out_of_range",
            f"cached_input_tokens {item.cached_input_tokens} + cache_write_tokens {item.cache_write_tokens}"
            f" exceed input_tokens {item.input_tokens}",
        )
    elif not EARLIEST_TS <= item.ts < LATEST_TS:
        problem = ("out_of_range", f"ts {item.ts.isoformat()} is not between the years 2000 and 2199")
    elif item.ts > now + max_skew:
        problem = ("future_timestamp", f"ts {item.ts.isoformat()} is more than {max_skew} ahead of {now}")
    if problem is not None:
        rejection = out.rejection
        if rejection is None:
            rejection = out.rejection = Rejection(items=items, user_id=topic_user)
        detail = problem[1] if index is None else f"item {index}: {problem[1]}"
        rejection.add(problem[0], detail, item.event_id)
        return
    out.commands.append(
        RecordUsage(
            event_id=item.event_id,
            user_id=item.user_id,
            ts=item.ts,
            model=item.model,
            input_tokens=item.input_tokens,
            output_tokens=item.output_tokens,
            cached_input_tokens=item.cached_input_tokens,
            cache_write_tokens=item.cache_write_tokens,
            feature=item.feature,
            reservation_id=item.reservation_id,
            outcome=item.outcome,
            topic=topic,
            payload=payload,
        )
    )


def _usage_slow_path(
    error: Exception, topic_user: str | None, payload: bytes, now: datetime, max_skew: timedelta, topic: str
) -> Decoded:
    """The typed decode failed with `error`: find out whether the whole payload is bad or only some array
    items, judging each item once (a 64 KB array holds some 32,000) and spelling out only the first few."""
    generic = _generic(payload)
    if not isinstance(generic, list):
        whole = _classify(error, payload, topic_user)
        if isinstance(generic, dict) and isinstance(generic.get("event_id"), str):
            whole.event_ids.append(generic["event_id"])
        return Decoded(rejection=whole)
    if not generic:
        return _one("empty", "an empty array carries no usage", topic_user)
    rejection = Rejection(items=len(generic), user_id=topic_user)
    out = Decoded(rejection=rejection)
    for index, element in enumerate(generic):
        if type(element) is not dict:  # no item at all: refused without asking msgspec
            detail = (
                f"item {index}: Expected `object`, got `{_json_type(element)}`" if rejection.listing else None
            )
            rejection.add("not_an_object", detail)
            continue
        try:
            item = msgspec.convert(element, _UsageIn)
        except msgspec.ValidationError as invalid:
            reason, text = _reason_of(invalid)
            detail = f"item {index}: {text.replace('`$', f'`$[{index}]', 1)}" if rejection.listing else None
            event_id = element.get("event_id")
            rejection.add(reason, detail, event_id if isinstance(event_id, str) else None)
            continue
        _judge_usage(item, index, len(generic), topic_user, now, max_skew, None, topic, out)
    if not rejection.count:  # the typed decode failed, yet every item passed: cannot be, but never lose it
        rejection.add("malformed_json", f"undecodable payload ({type(error).__name__})")
    return out


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", list: "array"}.get(type(value), type(value).__name__)


def _generic(payload: bytes) -> Any:
    try:
        return _any_decoder.decode(payload)
    except Exception:
        return None


def _classify(error: BaseException, payload: bytes, user: str | None) -> Rejection:
    """A whole payload that does not decode: one rejection with the reason."""
    if isinstance(error, UnicodeDecodeError) or _not_utf8(payload):
        return _rejection("not_utf8", f"payload is not valid UTF-8: {error}", user)
    if not isinstance(error, msgspec.ValidationError):  # ValidationError subclasses DecodeError
        return _rejection("malformed_json", str(error), user)
    reason, text = _reason_of(error)
    return _rejection(reason, text, user)


def _reason_of(error: msgspec.ValidationError) -> tuple[Reason, str]:
    text = str(error)
    reason: Reason
    if "missing required field" in text:
        reason = "missing_field"
    elif text.startswith(("Expected `object`", "Expected `object | array`", "Expected `array | object`")):
        reason = "not_an_object"
    elif ">=" in text or "<=" in text or "length" in text:
        reason = "out_of_range"
    else:
        reason = "wrong_type"
    return reason, text


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
