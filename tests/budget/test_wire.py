"""The wire decoder: good payloads become commands, every kind of bad input a precise rejection, and no
bytes at all make it raise."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from mqtt_helpers import usage_body

from budget.domain.ledger import Authorize, ConfigureUser, RecordUsage
from budget.mqtt.topics import reply_topic_problem
from budget.service.wire import MAX_PAYLOAD_BYTES, AuthorizeRequest, decode_message

NOW = datetime(2026, 11, 26, 21, 0, tzinfo=UTC)


def usage(**over: object) -> dict[str, object]:
    return usage_body("e1") | over


def enc(value: object) -> bytes:
    return json.dumps(value).encode()


def reasons(topic: str, payload: bytes) -> list[str]:
    return [r.reason for r in decode_message(topic, payload, NOW).rejected]


def test_one_usage_event_becomes_one_command() -> None:
    out = decode_message("margins/usage/alice", enc(usage()), NOW)
    assert out.rejected == []
    [cmd] = out.commands
    assert isinstance(cmd, RecordUsage)
    assert cmd.event_id == "e1" and cmd.input_tokens == 900 and cmd.output_tokens == 250
    assert cmd.ts == datetime(2026, 11, 26, 20, tzinfo=UTC)
    assert cmd.topic == "margins/usage/alice" and cmd.payload is not None


def test_optional_fields_default() -> None:
    minimal = {k: v for k, v in usage().items() if k in {"event_id", "user_id", "ts", "model"}}
    minimal |= {"input_tokens": 1, "output_tokens": 2}
    [cmd] = decode_message("margins/usage/alice", enc(minimal), NOW).commands
    assert isinstance(cmd, RecordUsage)
    assert (cmd.cached_input_tokens, cmd.feature, cmd.reservation_id, cmd.outcome) == (
        0,
        "default",
        None,
        "ok",
    )


def test_array_mixing_good_and_bad_keeps_the_good() -> None:
    batch = [
        usage(event_id="a"),
        usage(event_id="b", input_tokens=-1),
        usage(event_id="c"),
        {"event_id": "d"},
        usage(event_id="e", user_id="mallory"),
        "not an object",
    ]
    out = decode_message("margins/usage/alice", enc(batch), NOW)
    assert [c.event_id for c in out.commands if isinstance(c, RecordUsage)] == ["a", "c"]
    assert [r.reason for r in out.rejected] == [
        "out_of_range",
        "missing_field",
        "user_mismatch",
        "not_an_object",
    ]
    assert "element 1" in out.rejected[0].detail and "input_tokens" in out.rejected[0].detail
    assert json.loads(out.rejected[0].payload)["event_id"] == "b"


def test_each_kind_of_bad_input_has_its_reason() -> None:
    topic = "margins/usage/alice"
    assert reasons(topic, b"{not json") == ["malformed_json"]
    assert reasons(topic, b'{"event_id": "\xff\xfe"}') == ["not_utf8"]
    assert reasons(topic, b"\xff\xfe\x00") == ["not_utf8"]
    assert reasons(topic, enc(usage(input_tokens="900"))) == ["wrong_type"]
    assert reasons(topic, enc(usage(input_tokens=9.5))) == ["wrong_type"]
    assert reasons(topic, enc(usage(input_tokens=True))) == ["wrong_type"]
    assert reasons(topic, enc({"event_id": "x", "user_id": "alice"})) == ["missing_field"]
    assert reasons(topic, enc(usage(output_tokens=-5))) == ["out_of_range"]
    assert reasons(topic, enc(usage(output_tokens=10_000_001))) == ["out_of_range"]
    assert reasons(topic, enc(usage(cached_input_tokens=901))) == ["out_of_range"]
    assert reasons(topic, enc(usage(user_id="bob"))) == ["user_mismatch"]
    assert reasons(topic, enc(usage(ts="2026-11-26T20:00:00"))) == ["wrong_type"]  # naive: no time zone
    assert reasons(topic, enc(usage(ts="2026-11-26T21:06:00Z"))) == ["future_timestamp"]
    for far in ("0001-01-01T00:00:00+05:00", "1999-12-31T23:59:59Z", "9999-12-31T23:00:00-05:00"):
        assert reasons(topic, enc(usage(ts=far))) == ["out_of_range"], far
    assert reasons(topic, enc(usage(outcome="great"))) == ["wrong_type"]
    assert reasons(topic, b"[]") == ["empty"]
    assert reasons(topic, b"42") == ["not_an_object"]
    assert reasons(topic, b"x" * (MAX_PAYLOAD_BYTES + 1)) == ["too_large"]
    assert reasons("margins/usage/", enc(usage())) == ["bad_topic"]
    assert reasons("margins/usage/alice/extra", enc(usage())) == ["bad_topic"]
    assert reasons("elsewhere", enc(usage())) == ["bad_topic"]


def test_a_late_event_is_fine_and_small_skew_is_tolerated() -> None:
    late = usage(ts="2025-01-31T23:30:00-08:00")
    soon = usage(event_id="e2", ts=(NOW + timedelta(minutes=4)).isoformat())
    assert len(decode_message("margins/usage/alice", enc([late, soon]), NOW).commands) == 2


def test_unknown_model_is_left_to_the_ledger() -> None:
    [cmd] = decode_message("margins/usage/alice", enc(usage(model="mystery-9")), NOW).commands
    assert isinstance(cmd, RecordUsage) and cmd.model == "mystery-9"


def test_authorize() -> None:
    body = {
        "request_id": "q1",
        "user_id": "alice",
        "model": "gpt-4o",
        "max_input_tokens": 1000,
        "max_output_tokens": 500,
        "reply_to": "margins/replies/app1/q1",
    }
    [req] = decode_message("margins/authorize/alice", enc(body), NOW).commands
    assert isinstance(req, AuthorizeRequest) and isinstance(req.command, Authorize)
    assert req.reply_to == "margins/replies/app1/q1" and req.command.max_output_tokens == 500

    bad = decode_message("margins/authorize/alice", enc(body | {"max_input_tokens": -1}), NOW).rejected
    assert [(r.reason, r.request_id, r.reply_to) for r in bad] == [
        ("out_of_range", "q1", "margins/replies/app1/q1")
    ]
    forged = decode_message("margins/authorize/alice", enc(body | {"reply_to": "margins/status/bob"}), NOW)
    assert [(r.reason, r.reply_to) for r in forged.rejected] == [("bad_reply_topic", None)]
    other = decode_message("margins/authorize/alice", enc(body | {"user_id": "bob"}), NOW).rejected
    assert [r.reason for r in other] == ["user_mismatch"]


def test_authorize_reject_never_keeps_an_unsafe_reply_topic() -> None:
    body = {
        "request_id": "q1",
        "user_id": "bob",
        "model": "gpt-4o",
        "max_input_tokens": 1000,
        "max_output_tokens": 500,
        "reply_to": "margins/status/carol",
    }
    mismatch = decode_message("margins/authorize/alice", enc(body), NOW).rejected
    assert [(r.reason, r.request_id, r.reply_to) for r in mismatch] == [("user_mismatch", "q1", None)]
    malformed = decode_message("margins/authorize/alice", enc(body | {"max_input_tokens": -1}), NOW)
    assert [(r.reason, r.reply_to) for r in malformed.rejected] == [("out_of_range", None)]
    safe = decode_message("margins/authorize/alice", enc(body | {"reply_to": "margins/replies/a/1"}), NOW)
    assert [(r.reason, r.reply_to) for r in safe.rejected] == [("user_mismatch", "margins/replies/a/1")]


def test_reply_topics() -> None:
    assert reply_topic_problem("margins/replies/app/1") is None
    assert reply_topic_problem("myapp/replies/1") is None
    for bad in ("margins/status/bob", "margins/admin/users/bob", "a/+/b", "a/#", "$SYS/x", ""):
        assert reply_topic_problem(bad) is not None


def test_admin() -> None:
    body = {"cap_usd": 5, "plan": "pro", "timezone": "America/Los_Angeles"}
    [cmd] = decode_message("margins/admin/users/alice", enc(body), NOW).commands
    assert isinstance(cmd, ConfigureUser)
    assert (cmd.user_id, cmd.cap_usd, cmd.plan, cmd.timezone) == (
        "alice",
        Decimal(5),
        "pro",
        "America/Los_Angeles",
    )
    assert reasons("margins/admin/users/alice", enc({"cap_usd": -1})) == ["out_of_range"]
    assert reasons("margins/admin/users/alice", enc({"cap_usd": "lots"})) == ["wrong_type"]
    assert reasons("margins/admin/users/alice", enc({"timezone": "Mars/Olympus"})) == ["bad_timezone"]
    assert reasons("margins/admin/users/alice", enc({"user_id": "bob", "cap_usd": 1})) == ["user_mismatch"]


@settings(max_examples=400, deadline=None)
@given(
    topic=st.sampled_from(
        ["margins/usage/alice", "margins/authorize/alice", "margins/admin/users/alice", "margins/x", ""]
    ),
    payload=st.binary(max_size=512),
)
def test_arbitrary_bytes_never_raise(topic: str, payload: bytes) -> None:
    out = decode_message(topic, payload, NOW)
    assert out.commands or out.rejected


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(sorted(usage())), json_values, max_size=10))
def test_arbitrary_json_objects_become_commands_or_reasons(fields: dict[str, object]) -> None:
    payload = enc([usage(), usage() | fields])
    out = decode_message("margins/usage/alice", payload, NOW)
    assert len(out.commands) + len(out.rejected) == 2
    assert all(r.detail for r in out.rejected)
