"""The wire decoder: good payloads become commands, every kind of bad input a precise rejection, and no
bytes at all make it raise."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from budget.domain.ledger import Authorize, ConfigureUser, RecordUsage, RenewReservation
from budget.service.rejection import MAX_LISTED, Rejection
from budget.service.wire import (
    MAX_PAYLOAD_BYTES,
    AuthorizeRequest,
    decode_addressed,
    decode_message,
    named_user,
)
from tests.budget.mqtt_helpers import usage_body

NOW = datetime(2026, 11, 26, 21, 0, tzinfo=UTC)


def usage(**over: object) -> dict[str, object]:
    return usage_body("e1") | over


def enc(value: object) -> bytes:
    return json.dumps(value).encode()


def reasons(topic: str, payload: bytes) -> list[str]:
    rejection = decode_message(topic, payload, NOW).rejection
    return [] if rejection is None else list(rejection.by_reason)


def rejected(topic: str, payload: bytes) -> Rejection:
    rejection = decode_message(topic, payload, NOW).rejection
    assert rejection is not None
    return rejection


def test_one_usage_event_becomes_one_command() -> None:
    out = decode_message("margins/usage/alice", enc(usage()), NOW)
    assert out.rejection is None
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


def test_cache_writes_are_carried_and_bounded_by_the_input() -> None:
    [cmd] = decode_message(
        "margins/usage/alice", enc(usage(cached_input_tokens=500, cache_write_tokens=400)), NOW
    ).commands
    assert isinstance(cmd, RecordUsage)
    assert (cmd.input_tokens, cmd.cached_input_tokens, cmd.cache_write_tokens) == (900, 500, 400)
    too_many = rejected("margins/usage/alice", enc(usage(cached_input_tokens=500, cache_write_tokens=401)))
    assert list(too_many.by_reason) == ["out_of_range"]
    assert "cached_input_tokens 500 + cache_write_tokens 401 exceed input_tokens 900" in too_many.listed[0]
    assert reasons("margins/usage/alice", enc(usage(cache_write_tokens=-1))) == ["out_of_range"]


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
    rejection = out.rejection
    assert rejection is not None
    assert (rejection.count, rejection.items, rejection.reason) == (4, 6, "out_of_range")
    assert rejection.by_reason == {
        "out_of_range": 1,
        "missing_field": 1,
        "user_mismatch": 1,
        "not_an_object": 1,
    }
    assert rejection.detail.startswith("4 of 6 items rejected; item 1: ")
    assert (
        "`$[1].input_tokens`" in rejection.detail
        and "item 5: Expected `object`, got `str`" in rejection.detail
    )
    assert rejection.event_ids == ["b", "d", "e"]  # the rejected items that named an id
    # good items first, then bad ones: the same decision either way round
    flipped = decode_message("margins/usage/alice", enc(batch[::-1]), NOW)
    assert [c.event_id for c in flipped.commands if isinstance(c, RecordUsage)] == ["c", "a"]


def test_a_64kb_array_of_bad_items_is_one_rejection_that_counts_them() -> None:
    zeros = b"[" + b",".join([b"0"] * 32_000) + b"]"
    empties = b"[" + b",".join([b"{}"] * 21_000) + b"]"
    assert len(zeros) <= MAX_PAYLOAD_BYTES and len(empties) <= MAX_PAYLOAD_BYTES
    for payload, count, reason in ((zeros, 32_000, "not_an_object"), (empties, 21_000, "missing_field")):
        out = decode_message("margins/usage/alice", payload, NOW)
        assert out.commands == []
        rejection = out.rejection
        assert rejection is not None and rejection.user_id == "alice"
        assert (rejection.count, rejection.items, rejection.reason) == (count, count, reason)
        assert rejection.detail.startswith(f"{count:,} of {count:,} items rejected; item 0: ")
        assert rejection.detail.endswith("; ...") and rejection.detail.count("item ") == MAX_LISTED
        assert len(rejection.listed) == MAX_LISTED


def test_one_rejection_becomes_one_dead_letter_keeping_the_whole_payload() -> None:
    payload = enc([usage(event_id="a"), usage(event_id="b", model=7), usage(event_id="c", user_id="bob")])
    rejection = rejected("margins/usage/alice", payload)
    letter = rejection.dead_letter(NOW, "margins/usage/alice", payload)
    assert (letter.reason, letter.count, letter.user_id, letter.event_id) == ("wrong_type", 2, "alice", None)
    assert letter.original_payload() == payload  # re-sending it is harmless: event ids dedupe
    lone = rejected("margins/usage/alice", enc(usage(event_id="z", user_id="bob")))
    letter = lone.dead_letter(NOW, "margins/usage/alice", b"{}")
    assert (letter.count, letter.event_id) == (1, "z") and letter.detail.startswith("payload user_id 'bob'")


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
    assert reasons("margins/renew/alice", b"x" * (MAX_PAYLOAD_BYTES + 1)) == ["too_large"]
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

    bad = rejected("margins/authorize/alice", enc(body | {"max_input_tokens": -1}))
    assert (bad.reason, bad.request_id, bad.reply_to) == ("out_of_range", "q1", "margins/replies/app1/q1")
    # an unsafe reply topic is no reason to refuse the request: it is decided, and not answered
    for unsafe in ("margins/status/bob", "margins/replies/a\tb", "margins/replies/\x85", "r/\ufdd0", "x/+"):
        [forged] = decode_message("margins/authorize/alice", enc(body | {"reply_to": unsafe}), NOW).commands
        assert isinstance(forged, AuthorizeRequest) and forged.reply_to is None
        assert forged.reply_problem is not None and forged.reply_problem.startswith("reply topic")
    assert reasons("margins/authorize/alice", enc(body | {"user_id": "bob"})) == ["user_mismatch"]


def test_an_authorization_deadline_is_the_earlier_of_payload_and_message_expiry() -> None:
    body = {"request_id": "q1", "user_id": "alice", "model": "gpt-4o", "max_input_tokens": 1}
    body |= {"max_output_tokens": 1}

    def deadline(payload: dict[str, object], expiry_s: int | None) -> datetime | None:
        topic = "margins/authorize/alice"
        [req] = decode_message(topic, enc(payload), NOW, message_expiry_s=expiry_s).commands
        assert isinstance(req, AuthorizeRequest)
        return req.command.expires_at

    soon = (NOW + timedelta(seconds=5)).isoformat()
    assert deadline(body, None) is None
    assert deadline(body, 30) == NOW + timedelta(seconds=30)
    assert deadline(body | {"expires_at": soon}, None) == NOW + timedelta(seconds=5)
    assert deadline(body | {"expires_at": soon}, 30) == NOW + timedelta(seconds=5)
    assert deadline(body | {"expires_at": soon}, 2) == NOW + timedelta(seconds=2)
    assert reasons("margins/authorize/alice", enc(body | {"expires_at": "2026-11-26T21:00:05"})) == [
        "wrong_type"  # naive: no time zone
    ]


def test_a_renewal_becomes_one_command_and_a_bad_one_a_rejection() -> None:
    body = {"reservation_id": "r-1", "user_id": "alice"}
    [cmd] = decode_message("margins/renew/alice", enc(body), NOW).commands
    assert isinstance(cmd, RenewReservation)
    assert (cmd.reservation_id, cmd.user_id, cmd.topic) == ("r-1", "alice", "margins/renew/alice")
    assert reasons("margins/renew/alice", enc({"user_id": "alice"})) == ["missing_field"]
    assert reasons("margins/renew/alice", enc(body | {"user_id": "bob"})) == ["user_mismatch"]
    assert reasons("margins/renew/alice", b"{oops") == ["malformed_json"]
    assert reasons("margins/renew/alice", enc(body | {"reservation_id": 5})) == ["wrong_type"]
    assert reasons("margins/renew/alice/x", enc(body)) == ["bad_topic"]


def test_a_too_large_message_names_the_topics_user() -> None:
    for topic in ("margins/usage/alice", "margins/authorize/alice", "margins/admin/users/alice"):
        rejection = rejected(topic, b"[" + b" " * MAX_PAYLOAD_BYTES + b"]")
        assert (rejection.reason, rejection.user_id) == ("too_large", "alice")
        assert "65,538 bytes; the limit is 65,536" in rejection.detail


def test_authorize_reject_never_keeps_an_unsafe_reply_topic() -> None:
    body = {
        "request_id": "q1",
        "user_id": "bob",
        "model": "gpt-4o",
        "max_input_tokens": 1000,
        "max_output_tokens": 500,
        "reply_to": "margins/status/carol",
    }
    mismatch = rejected("margins/authorize/alice", enc(body))
    assert (mismatch.reason, mismatch.request_id, mismatch.reply_to) == ("user_mismatch", "q1", None)
    malformed = rejected("margins/authorize/alice", enc(body | {"max_input_tokens": -1}))
    assert (malformed.reason, malformed.reply_to) == ("out_of_range", None)
    safe = rejected("margins/authorize/alice", enc(body | {"reply_to": "margins/replies/a/1"}))
    assert (safe.reason, safe.reply_to) == ("user_mismatch", "margins/replies/a/1")
    tabbed = rejected("margins/authorize/alice", enc(body | {"reply_to": "margins/replies/a\t1"}))
    assert (tabbed.reason, tabbed.reply_to) == ("user_mismatch", None)


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
        [
            "margins/usage/alice",
            "margins/authorize/alice",
            "margins/renew/alice",
            "margins/admin/users/alice",
            "margins/x",
            "",
        ]
    ),
    payload=st.binary(max_size=512),
)
def test_arbitrary_bytes_never_raise(topic: str, payload: bytes) -> None:
    out = decode_message(topic, payload, NOW)
    assert out.commands or out.rejection


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
    rejection = out.rejection
    assert len(out.commands) + (rejection.count if rejection else 0) == 2
    assert rejection is None or (rejection.items == 2 and rejection.detail.startswith("1 of 2 items"))


def test_a_body_without_a_topic_is_decoded_on_its_users_topic() -> None:
    one, other = usage(event_id="a", user_id="ann"), usage(event_id="b", user_id="bob")
    assert named_user(enc(one)) == "ann"
    assert named_user(enc([one, other])) == "ann"
    assert named_user(enc([{"event_id": "x"}, other])) == "bob"  # the first item that names a user
    assert named_user(b"{not json") is None and named_user(enc([1, 2])) is None

    topic, decoded = decode_addressed("margins/usage/", enc([one, other]), NOW)
    assert topic == "margins/usage/ann"
    expected = decode_message(topic, enc([one, other]), NOW)
    assert decoded.commands == expected.commands
    assert decoded.rejection is not None and expected.rejection is not None
    assert (decoded.rejection.reason, decoded.rejection.detail) == (
        "user_mismatch",
        expected.rejection.detail,
    )

    topic, decoded = decode_addressed("margins/usage/", b"{not json", NOW)
    assert topic == "margins/usage/" and not decoded.commands
    assert decoded.rejection is not None and decoded.rejection.user_id is None
    assert decoded.rejection.reason == "malformed_json"
    _, decoded = decode_addressed("margins/authorize/", enc({"request_id": "r"}), NOW)
    assert decoded.rejection is not None and decoded.rejection.reason == "missing_field"
    assert decoded.rejection.request_id == "r"
    _, decoded = decode_addressed("margins/usage/", b" " * (MAX_PAYLOAD_BYTES + 1), NOW)
    assert decoded.rejection is not None and decoded.rejection.reason == "too_large"
