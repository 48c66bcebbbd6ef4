"""What an alert becomes at the webhook: the `id` the enforcer gives it, its key, its text and body."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from budget.alerts.content import alert_text, parse_alert
from budget.domain.events import DeadLettered, LimitCrossed, UsageRecorded
from budget.errors import NotAnAlert
from budget.service.messages import alert_json, overshoot_json, unknown_model_json

T0 = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def crossed(limit: str = "cap", user: str = "u42", month: str = "2026-12") -> LimitCrossed:
    return LimitCrossed(
        user_id=user,
        ts=T0,
        month=month,
        limit=limit,  # type: ignore[arg-type]
        spent_nanos=1_020_000_000,
        reserved_nanos=30_000_000,
        cap_nanos=1_000_000_000,
    )


def overshot(event_id: str = "e7") -> UsageRecorded:
    return UsageRecorded(
        event_id=event_id,
        user_id="u42",
        ts=T0,
        model="gpt-4o",
        input_tokens=10,
        output_tokens=10,
        cost_nanos=125_000_000,
        reservation_id="r9",
        month="2026-12",
        overshoot=True,
    )


def dead(payload: bytes, event_id: str | None) -> DeadLettered:
    return DeadLettered.of(
        ts=T0,
        topic="margins/usage/u42",
        payload=payload,
        reason="unknown_model",
        detail="unknown model 'gpt-9'",
        user_id="u42",
        event_id=event_id,
    )


def test_each_alert_gets_an_id_from_its_content_keeping_its_fields() -> None:
    cap = json.loads(alert_json(crossed()))
    assert cap["id"] == "cap:u42:2026-12"
    assert {"alert", "user_id", "month", "spent_usd", "reserved_usd", "cap_usd"} <= cap.keys()
    assert json.loads(alert_json(crossed("soft")))["id"] == "soft:u42:2026-12"
    assert json.loads(alert_json(crossed(month="2027-01")))["id"] == "cap:u42:2027-01"
    assert json.loads(overshoot_json(overshot()))["id"] == "overshoot:u42:e7"
    assert json.loads(unknown_model_json(dead(b"{}", "e8"), "u42"))["id"] == "unknown_model:u42:e8"


def test_an_unknown_model_alert_without_an_event_id_is_keyed_by_its_message() -> None:
    one = json.loads(unknown_model_json(dead(b"[1, 2]", None), "u42"))["id"]
    again = json.loads(unknown_model_json(dead(b"[1, 2]", None), "u42"))["id"]
    other = json.loads(unknown_model_json(dead(b"[1, 3]", None), "u42"))["id"]
    assert one == again != other
    assert one.startswith("unknown_model:u42:")


def test_the_body_is_the_alert_plus_one_readable_line() -> None:
    alert = parse_alert("margins/alerts/u42", alert_json(crossed()))
    assert alert.key == "cap:u42:2026-12"
    assert alert.user_id == "u42"
    body = json.loads(alert.body())
    assert (
        body["text"]
        == "margins: user u42 reached the cap in 2026-12: $1.02 spent (+$0.03 reserved) of a $1.00 cap"
    )
    del body["text"]
    assert body == json.loads(alert_json(crossed()))


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        (
            {"alert": "soft", "user_id": "a", "month": "2026-12", "spent_usd": 0.8, "reserved_usd": 0.0,
             "cap_usd": 1.0},
            "margins: user a reached the soft limit in 2026-12: $0.80 spent of a $1.00 cap",
        ),
        (
            json.loads(overshoot_json(overshot())),
            "margins: user u42 overshot in 2026-12: usage e7 cost $0.125 after its reservation r9 expired",
        ),
        (
            {"alert": "unknown_model", "user_id": "b", "detail": "unknown model 'gpt-9'"},
            "margins: usage of user b was not counted: unknown model 'gpt-9'",
        ),
        ({"alert": "brand_new", "user_id": "c"}, "margins: user c: brand_new alert"),
        (
            {"alert": "cap", "user_id": "d", "month": "2026-12", "spent_usd": 0.000285, "cap_usd": 1234.5},
            "margins: user d reached the cap in 2026-12: $0.000285 spent of a $1,234.50 cap",
        ),
    ],
)  # fmt: skip
def test_text_names_the_user_what_happened_and_the_money(fields: dict[str, object], text: str) -> None:
    assert alert_text(fields) == text


def test_an_alert_without_an_id_is_keyed_by_a_digest_of_its_content() -> None:
    old = {"alert": "cap", "user_id": "u1", "month": "2026-12", "spent_usd": 1.0}
    key = parse_alert("margins/alerts/u1", json.dumps(old).encode()).key
    reordered = json.dumps(dict(reversed(old.items()))).encode()
    assert parse_alert("margins/alerts/u1", reordered).key == key
    changed = json.dumps({**old, "month": "2027-01"}).encode()
    assert parse_alert("margins/alerts/u1", changed).key != key
    assert key.startswith("cap:u1:sha256=")


@pytest.mark.parametrize("payload", [b"not json", b"[1]", b'{"user_id": "u"}', b"\xff"])
def test_what_is_not_an_alert_says_so(payload: bytes) -> None:
    with pytest.raises(NotAnAlert, match=r"^margins/alerts/u: "):
        parse_alert("margins/alerts/u", payload)
