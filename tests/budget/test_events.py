"""Events: one tagged JSON form per type, lossless dead letters, old usage JSON still decodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget.domain.events import (
    EVENT_TYPES,
    USAGE_SCHEMA_VERSION,
    DeadLettered,
    Event,
    LimitCrossed,
    ReservationDenied,
    ReservationExpired,
    ReservationGranted,
    ReservationRenewed,
    UsageRecorded,
    UserConfigured,
    decode_event,
    decode_usage,
    encode_event,
    event_tag,
)
from budget.errors import PayloadEncodingError

TS = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)

SAMPLES: list[Event] = [
    UsageRecorded(
        event_id="e1",
        user_id="u",
        ts=TS,
        model="gpt-4o",
        input_tokens=9,
        output_tokens=3,
        cost_nanos=52_500,
        reservation_id="r-1",
        month="2026-11",
    ),
    ReservationGranted(
        reservation_id="r-1",
        request_id="q1",
        user_id="u",
        ts=TS,
        month="2026-11",
        decision="degrade",
        model="gpt-4o-mini",
        requested_model="gpt-4o",
        amount_nanos=450_000,
        expires_at=TS + timedelta(minutes=10),
    ),
    ReservationDenied(
        request_id="q2",
        user_id="u",
        ts=TS,
        month="2026-11",
        model="gpt-4o",
        amount_nanos=9,
        remaining_nanos=1,
        reason="cap",
    ),
    ReservationExpired(reservation_id="r-1", user_id="u", ts=TS, month="2026-11", amount_nanos=450_000),
    ReservationRenewed(reservation_id="r-1", user_id="u", ts=TS, expires_at=TS),
    UserConfigured(user_id="u", ts=TS, cap_nanos=5_000_000_000, plan="pro", timezone="Europe/Paris"),
    LimitCrossed(
        user_id="u", ts=TS, month="2026-11", limit="soft", spent_nanos=8, reserved_nanos=0, cap_nanos=10
    ),
    DeadLettered.of(ts=TS, topic="margins/usage/u", payload=b"\x00\xff", reason="bad_json", user_id="u"),
]


def test_every_event_type_has_a_sample() -> None:
    assert {type(e) for e in SAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: event_tag(e))
def test_tagged_json_round_trips(event: Event) -> None:
    data = encode_event(event)
    assert msgspec.json.decode(data)["type"] == event_tag(event)
    assert msgspec.json.decode(data)["v"] == (USAGE_SCHEMA_VERSION if isinstance(event, UsageRecorded) else 1)
    assert decode_event(data) == event


def test_usage_json_written_before_month_existed_still_decodes() -> None:
    old = (
        b'{"type":"usage_recorded","event_id":"e","user_id":"u","ts":"2026-11-26T20:00:00Z","model":"gpt-4o",'
        b'"input_tokens":1,"output_tokens":1,"cost_nanos":12500,"v":1}'
    )
    event = decode_event(old)
    assert isinstance(event, UsageRecorded) and event.month is None and event.feature == "default"
    assert not event.late and not event.overshoot and event.v == 1
    assert decode_usage(old) == event


def test_unknown_tag_and_bad_fields_are_rejected() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"type":"free_money","user_id":"u"}')
    with pytest.raises(msgspec.ValidationError):
        decode_event(
            b'{"type":"reservation_expired","reservation_id":"r","user_id":"u","ts":"x","month":"m"}'
        )


def test_events_are_frozen() -> None:
    usage = SAMPLES[0]
    assert isinstance(usage, UsageRecorded)
    with pytest.raises(AttributeError):
        usage.cost_nanos = 0  # type: ignore[misc]


@given(st.binary(max_size=300))
def test_dead_letters_keep_any_payload_losslessly(payload: bytes) -> None:
    dead = DeadLettered.of(ts=TS, topic="t", payload=payload, reason="r")
    again = decode_event(encode_event(dead))
    assert isinstance(again, DeadLettered)
    assert again.original_payload() == payload
    assert again.payload_encoding == ("utf-8" if _is_utf8(payload) else "base64")


def test_a_corrupt_base64_dead_letter_is_a_payload_error() -> None:
    dead = DeadLettered(ts=TS, topic="t", payload="not base64!", reason="r", payload_encoding="base64")
    with pytest.raises(PayloadEncodingError, match="dead letter payload is not valid base64") as caught:
        dead.original_payload()
    assert caught.value.encoding == "base64" and isinstance(caught.value, ValueError)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
