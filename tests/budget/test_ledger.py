"""The pure ledger: months in the user's zone, reservations, degrade/deny, dedupe, dead letters, limits.

The month rule, ids and the dedupe window are in test_ledger_months.py; the state machine against a
plain-dict model in test_ledger_machine.py; the compact state and snapshots in test_ledger_state.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, get_args

import pytest

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
)
from budget.domain.ledger import (
    Authorize,
    ConfigureUser,
    Ledger,
    RecordUsage,
    RenewReservation,
    month_in,
    reservation_id_for,
    worst_case_nanos,
)
from tests.budget.ledger_helpers import CATALOG, MINI_COST, NOW, authorize, make_config, make_ledger, usage


def test_usage_is_priced_from_the_catalog_and_counted_once() -> None:
    ledger = make_ledger()
    [event] = ledger.execute(usage("e1"), NOW)
    assert isinstance(event, UsageRecorded)
    assert event.cost_nanos == 1000 * 150 + 100 * 600
    assert event.month == "2026-11"
    assert ledger.seen("u", "e1")
    assert ledger.execute(usage("e1"), NOW) == []  # redelivered
    ledger.apply(event)  # replayed twice anyway
    assert ledger.status("u", NOW).spent_nanos == 210_000


def test_users_are_those_with_spend_or_reservations_in_months_that_can_change() -> None:
    ledger = make_ledger()
    assert ledger.users() == set()
    ledger.execute(ConfigureUser(user_id="only-configured", plan="pro"), NOW)
    ledger.execute(usage("e1", user="a"), NOW)
    ledger.execute(authorize("r1", user="b"), NOW)
    assert ledger.users() == {"a", "b"}
    months = ledger.snapshot()["months"]
    assert isinstance(months, dict)
    assert ledger.users() == {user for user, _month in months}
    # Two months on, November can no longer change: its users are no longer this ledger's to announce.
    january = datetime(2027, 1, 5, tzinfo=UTC)
    ledger.apply_all(ledger.expire_due(january))  # its expired reservation holds November a little longer
    later = january + timedelta(hours=2)
    ledger.execute(usage("e2", user="c", ts=later), later)
    assert ledger.users() == {"c"}
    assert ledger.months() == ["2027-01"]


def test_usage_at_2330_on_31_january_in_los_angeles_is_januarys() -> None:
    ledger = make_ledger()
    ts = datetime(2026, 2, 1, 7, 30, tzinfo=UTC)  # 23:30 on 31 January in Los Angeles (PST, UTC-8)
    ledger.execute(ConfigureUser(user_id="u", timezone="America/Los_Angeles"), ts)
    [event] = ledger.execute(usage("e1", ts=ts), ts + timedelta(minutes=1))
    assert isinstance(event, UsageRecorded) and event.month == "2026-01" and not event.late
    assert ledger.spent("u", "2026-01") == (MINI_COST, 0)
    assert ledger.spent("u", "2026-02") == (0, 0)
    assert month_in(ts, "UTC") == "2026-02"
    # The month was stored with the event: a later zone change does not move history.
    ledger.execute(ConfigureUser(user_id="u", timezone="UTC"), ts + timedelta(minutes=2))
    assert ledger.spent("u", "2026-01") == (MINI_COST, 0)


def test_unknown_model_is_dead_lettered_never_charged() -> None:
    ledger = make_ledger()
    events = ledger.decide(usage("e1", model="gpt-9-ultra"), NOW)
    assert [type(e) for e in events] == [DeadLettered]
    dead = events[0]
    assert isinstance(dead, DeadLettered) and dead.reason == "unknown_model" and dead.event_id == "e1"
    ledger.apply(dead)
    assert not ledger.seen("u", "e1")
    assert ledger.status("u", NOW).spent_nanos == 0
    denied = ledger.decide(authorize("r1", model="gpt-9-ultra"), NOW)
    assert [type(e) for e in denied] == [DeadLettered, ReservationDenied]


def test_dead_letter_keeps_the_original_payload() -> None:
    ledger = make_ledger()
    raw = b'{"model": "nope", "bytes": "\xff"}'
    command = RecordUsage(
        event_id="e",
        user_id="u",
        ts=NOW,
        model="nope",
        input_tokens=1,
        output_tokens=1,
        topic="t",
        payload=raw,
    )
    [dead] = ledger.decide(command, NOW)
    assert isinstance(dead, DeadLettered)
    assert dead.payload_encoding == "base64" and dead.original_payload() == raw and dead.topic == "t"


@pytest.mark.parametrize("kw", [{"input_tokens": -1}, {"cached_input_tokens": 2000}, {"output_tokens": -5}])
def test_bad_token_counts_are_dead_lettered(kw: dict[str, Any]) -> None:
    ledger = make_ledger()
    [dead] = ledger.decide(usage("e1", **kw), NOW)
    assert isinstance(dead, DeadLettered) and dead.reason == "bad_tokens"


def test_naive_timestamp_is_dead_lettered() -> None:
    ledger = make_ledger()
    [dead] = ledger.decide(usage("e1", ts=datetime(2026, 11, 1)), NOW)
    assert isinstance(dead, DeadLettered) and dead.reason == "bad_timestamp"


@pytest.mark.parametrize(
    ("zone", "ts"),
    [
        ("America/Los_Angeles", datetime(1, 1, 1, 3, 0, tzinfo=UTC)),  # before the year 1 there
        ("Asia/Tokyo", datetime(9999, 12, 31, 20, 0, tzinfo=UTC)),  # after the year 9999 there
    ],
)
def test_a_timestamp_without_a_month_in_the_users_zone_is_a_bad_timestamp(zone: str, ts: datetime) -> None:
    ledger = make_ledger()
    ledger.execute(ConfigureUser(user_id="u", timezone=zone), NOW)
    [dead] = ledger.decide(usage("e1", ts=ts), NOW)
    assert isinstance(dead, DeadLettered) and dead.reason == "bad_timestamp"
    assert zone in dead.detail and ts.isoformat() in dead.detail


def test_a_timestamp_far_ahead_of_the_clock_is_dead_lettered() -> None:
    ledger = make_ledger()
    [dead] = ledger.decide(usage("e1", ts=NOW + timedelta(hours=2)), NOW)
    assert isinstance(dead, DeadLettered) and dead.reason == "future_timestamp"
    [event] = ledger.decide(usage("e1", ts=NOW + timedelta(minutes=59)), NOW)
    assert isinstance(event, UsageRecorded)


def test_settlement_replaces_the_estimate_and_expiry_returns_it() -> None:
    ledger = make_ledger()
    [granted] = ledger.execute(authorize("r1"), NOW)
    [other] = ledger.execute(authorize("r2"), NOW)
    assert isinstance(granted, ReservationGranted) and isinstance(other, ReservationGranted)
    worst = worst_case_nanos(CATALOG["gpt-4o"], 1000, 500)
    assert granted.amount_nanos == worst and granted.reservation_id == reservation_id_for("u", "r1")
    assert ledger.status("u", NOW).reserved_nanos == 2 * worst
    ledger.execute(usage("e1", model="gpt-4o", reservation_id=granted.reservation_id), NOW)
    status = ledger.status("u", NOW)
    assert status.spent_nanos == 1000 * 2500 + 100 * 10_000
    assert status.reserved_nanos == worst
    assert ledger.expire_due(NOW + timedelta(seconds=599)) == []
    expired = ledger.expire_due(NOW + timedelta(seconds=600))
    assert [type(e) for e in expired] == [ReservationExpired]
    ledger.apply_all(expired)
    assert ledger.status("u", NOW).reserved_nanos == 0
    assert ledger.open_reservations() == []


def test_another_users_reservation_settles_nothing() -> None:
    ledger = make_ledger()
    [granted] = ledger.execute(authorize("r1", user="alice"), NOW)
    assert isinstance(granted, ReservationGranted)
    ledger.execute(usage("e1", user="mallory", reservation_id=granted.reservation_id), NOW)
    assert ledger.reservation(granted.reservation_id) is not None


def test_redelivered_authorization_reserves_once() -> None:
    ledger = make_ledger()
    assert len(ledger.execute(authorize("r1"), NOW)) == 1
    assert ledger.execute(authorize("r1"), NOW) == []
    assert ledger.status("u", NOW).reserved_nanos == worst_case_nanos(CATALOG["gpt-4o"], 1000, 500)


def test_concurrent_authorizations_never_exceed_the_cap() -> None:
    ledger = Ledger(make_config(cap_usd="0.45"), CATALOG)
    # Each asks for a worst case of $0.12: at most three fit in $0.45, however many arrive at once.
    big = (8_000, 10_000)
    decided = [ledger.execute(authorize(f"r{i}", tokens=big), NOW)[0] for i in range(200)]
    granted = [e for e in decided if isinstance(e, ReservationGranted)]
    assert worst_case_nanos(CATALOG["gpt-4o"], *big) == 120_000_000
    assert len(granted) == 3
    status = ledger.status("u", NOW)
    assert status.spent_nanos + status.reserved_nanos <= status.cap_nanos
    assert all(isinstance(e, ReservationDenied) for e in decided[3:])


def test_degrade_offers_the_cheaper_model_when_it_fits_else_denies() -> None:
    ledger = Ledger(make_config(cap_usd="0.01", at_cap="degrade", degrade_model="gpt-4o-mini"), CATALOG)
    first = ledger.execute(authorize("r1", tokens=(1000, 500)), NOW)[0]  # $0.0075 fits
    second = ledger.execute(authorize("r2", tokens=(1000, 500)), NOW)[
        0
    ]  # $0.0075 does not; mini's $0.00045 does
    assert isinstance(first, ReservationGranted) and first.decision == "allow" and first.model == "gpt-4o"
    assert isinstance(second, ReservationGranted) and second.decision == "degrade"
    assert second.model == "gpt-4o-mini" and second.requested_model == "gpt-4o"
    huge = ledger.execute(authorize("r3", tokens=(100_000, 100_000)), NOW)
    assert isinstance(huge[0], ReservationDenied)
    blocking = Ledger(make_config(cap_usd="0.01"), CATALOG)
    blocking.execute(authorize("r1"), NOW)
    assert isinstance(blocking.execute(authorize("r2"), NOW)[0], ReservationDenied)


def test_limits_are_announced_once_each_per_month() -> None:
    ledger = Ledger(make_config(cap_usd="0.001"), CATALOG)
    first = ledger.execute(usage("e1", input_tokens=4000, output_tokens=0), NOW)  # $0.0006: 60%
    assert [type(e) for e in first] == [UsageRecorded]
    second = ledger.execute(usage("e2", input_tokens=2000, output_tokens=0), NOW)  # 90%
    assert [(e.limit) for e in second if isinstance(e, LimitCrossed)] == ["soft"]
    assert ledger.status("u", NOW).state == "soft"
    third = ledger.execute(usage("e3", input_tokens=2000, output_tokens=0), NOW)  # 120%: recorded anyway
    assert [(e.limit) for e in third if isinstance(e, LimitCrossed)] == ["cap"]
    assert ledger.execute(usage("e4", input_tokens=2000, output_tokens=0), NOW)[1:] == []
    assert ledger.status("u", NOW).state == "capped"
    assert ledger.status("u", NOW).remaining_nanos == 0
    december = datetime(2026, 12, 1, tzinfo=UTC)  # a new month is a new key: nothing to reset
    assert ledger.status("u", december).state == "ok"
    assert ledger.status("u", december).spent_nanos == 0


def test_the_soft_alert_fires_on_settled_spend_not_on_a_reservation() -> None:
    ledger = make_ledger(cap_usd="0.01", soft_threshold_pct=50)
    # $0.0049 settled: 49% of the cap.
    assert ledger.execute(usage("e1", model="gpt-4o", input_tokens=1960, output_tokens=0), NOW)[1:] == []
    # A worst case of $0.0011 takes spent + reserved to 60%, past the soft threshold: still no soft alert.
    [granted] = ledger.execute(authorize("r1", model="gpt-4o", tokens=(440, 0)), NOW)
    assert isinstance(granted, ReservationGranted) and granted.amount_nanos == 1_100_000
    status = ledger.status("u", NOW)
    assert (status.spent_nanos, status.reserved_nanos, status.state) == (4_900_000, 1_100_000, "ok")
    # The call settles for $0.0002: spend passes 50%, and the soft alert fires now.
    settled = usage(
        "e2", model="gpt-4o", input_tokens=80, output_tokens=0, reservation_id=granted.reservation_id
    )
    [recorded, crossed] = ledger.execute(settled, NOW)
    assert isinstance(recorded, UsageRecorded) and recorded.cost_nanos == 200_000
    assert isinstance(crossed, LimitCrossed) and crossed.limit == "soft"
    assert (crossed.spent_nanos, crossed.reserved_nanos) == (5_100_000, 0)
    assert ledger.status("u", NOW).state == "soft"


def test_the_cap_is_announced_on_settled_and_reserved_spend() -> None:
    ledger = make_ledger(cap_usd="0.01", soft_threshold_pct=50)
    [granted, crossed] = ledger.execute(authorize("r1", model="gpt-4o", tokens=(4000, 0)), NOW)
    assert isinstance(granted, ReservationGranted) and granted.amount_nanos == 10_000_000
    assert isinstance(crossed, LimitCrossed) and crossed.limit == "cap"  # nothing fits any more
    assert ledger.status("u", NOW).state == "capped"


def test_configure_user_sets_cap_plan_and_zone_and_rejects_bad_values() -> None:
    ledger = make_ledger()
    [configured] = ledger.execute(ConfigureUser(user_id="u", cap_usd=Decimal("2.5"), plan="pro"), NOW)
    assert isinstance(configured, UserConfigured) and configured.cap_nanos == 2_500_000_000
    assert ledger.cap_nanos("u") == 2_500_000_000 and ledger.plan("u").name == "pro"
    assert ledger.status("u", NOW).plan == "pro"
    for bad in (
        ConfigureUser(user_id="u", timezone="Mars/Olympus"),
        ConfigureUser(user_id="u", plan="platinum"),
        ConfigureUser(user_id="u", cap_usd=Decimal("-1")),
    ):
        [dead] = ledger.decide(bad, NOW)
        assert isinstance(dead, DeadLettered) and dead.reason == "bad_config"
    assert ledger.decide(ConfigureUser(user_id="u"), NOW) == []


@pytest.mark.parametrize("cap", ["1e-30", "0.0000000005", "2.0000000001"])
def test_a_cap_that_is_not_whole_nano_dollars_is_rejected_never_rounded(cap: str) -> None:
    ledger = make_ledger()
    [dead] = ledger.decide(ConfigureUser(user_id="u", cap_usd=Decimal(cap)), NOW)
    assert isinstance(dead, DeadLettered) and dead.reason == "bad_config"
    assert repr(Decimal(cap)) in dead.detail and "whole number of nano-dollars" in dead.detail
    [zero] = ledger.decide(ConfigureUser(user_id="u", cap_usd=Decimal("0")), NOW)
    assert isinstance(zero, UserConfigured) and zero.cap_nanos == 0
    [smallest] = ledger.decide(ConfigureUser(user_id="u", cap_usd=Decimal("1e-9")), NOW)
    assert isinstance(smallest, UserConfigured) and smallest.cap_nanos == 1


def test_lowering_a_cap_under_the_spend_announces_the_cap() -> None:
    ledger = make_ledger()
    ledger.execute(usage("e1"), NOW)
    events = ledger.execute(ConfigureUser(user_id="u", cap_usd=Decimal("0.0001")), NOW)
    assert [e.limit for e in events if isinstance(e, LimitCrossed)] == ["soft", "cap"]


def test_replay_rebuilds_the_same_state() -> None:
    live = Ledger(make_config(cap_usd="0.02"), CATALOG)
    log = []
    log += live.execute(ConfigureUser(user_id="u", timezone="Asia/Tokyo"), NOW)
    for i in range(5):
        log += live.execute(authorize(f"r{i}"), NOW)
        log += live.execute(usage(f"e{i}", reservation_id=reservation_id_for("u", f"r{i}")), NOW)
    log += live.execute(authorize("late"), NOW)
    expired = live.expire_due(NOW + timedelta(hours=1))
    live.apply_all(expired)
    log += expired
    replayed = Ledger(make_config(cap_usd="0.02"), CATALOG)
    replayed.apply_all(log)
    assert replayed.snapshot() == live.snapshot()
    assert replayed.status("u", NOW) == live.status("u", NOW)


def test_apply_folds_every_type_of_event() -> None:
    """One event of each type of the Event union, each changing what it must (a type apply forgot would
    fail here as well as in mypy)."""
    ledger = make_ledger()
    month = "2026-11"

    def granted(reservation_id: str, amount: int) -> ReservationGranted:
        return ReservationGranted(
            reservation_id=reservation_id,
            request_id=reservation_id,
            user_id="u",
            ts=NOW,
            month=month,
            decision="allow",
            model="gpt-4o",
            requested_model="gpt-4o",
            amount_nanos=amount,
            expires_at=NOW + timedelta(minutes=10),
        )

    steps: list[tuple[Event, Callable[[], object], object]] = [
        (UserConfigured(user_id="u", ts=NOW, plan="pro"), lambda: ledger.plan("u").name, "pro"),
        (granted("r-1", 500), lambda: ledger.spent("u", month), (0, 500)),
        (
            UsageRecorded(
                event_id="e1",
                user_id="u",
                ts=NOW,
                model="gpt-4o",
                input_tokens=10,
                output_tokens=10,
                cost_nanos=300,
                reservation_id="r-1",
                month=month,
            ),
            lambda: ledger.spent("u", month),
            (300, 0),
        ),
        (granted("r-2", 70), lambda: ledger.reservation("r-2") is not None, True),
        (
            ReservationRenewed(
                reservation_id="r-2", user_id="u", ts=NOW, expires_at=NOW + timedelta(hours=1)
            ),
            lambda: ledger.reservation("r-2").expires_at,  # type: ignore[union-attr]
            NOW + timedelta(hours=1),
        ),
        (
            ReservationExpired(reservation_id="r-2", user_id="u", ts=NOW, month=month, amount_nanos=70),
            lambda: (ledger.reservation("r-2"), ledger.spent("u", month)),
            (None, (300, 0)),
        ),
        (
            LimitCrossed(
                user_id="u", ts=NOW, month=month, limit="soft", spent_nanos=1, reserved_nanos=0, cap_nanos=1
            ),
            lambda: ledger.snapshot()["crossed"],
            frozenset({("u", month, "soft")}),
        ),
        (
            ReservationDenied(
                request_id="q",
                user_id="u",
                ts=NOW,
                month=month,
                model="gpt-4o",
                amount_nanos=1,
                remaining_nanos=0,
                reason="cap",
            ),
            lambda: ledger.denials,
            1,
        ),
        (
            DeadLettered.of(ts=NOW, topic="t", payload=b"{", reason="malformed_json"),
            lambda: ledger.dead_letters,
            1,
        ),
    ]
    assert {type(event) for event, _, _ in steps} == set(get_args(Event))
    for event, state, expected in steps:
        assert state() != expected, type(event).__name__
        ledger.apply(event)
        assert state() == expected, type(event).__name__


def test_a_renewed_reservation_expires_a_ttl_after_its_last_renewal() -> None:
    ledger = make_ledger()
    [granted, *_] = ledger.execute(authorize("r1"), NOW)
    assert isinstance(granted, ReservationGranted)
    later = NOW + timedelta(seconds=500)
    [renewed] = ledger.execute(RenewReservation(reservation_id=granted.reservation_id, user_id="u"), later)
    assert isinstance(renewed, ReservationRenewed)
    assert renewed.expires_at == later + timedelta(seconds=600)
    assert ledger.expire_due(NOW + timedelta(seconds=700)) == []  # the first expiry is stale now
    [expired] = ledger.expire_due(later + timedelta(seconds=600))
    assert isinstance(expired, ReservationExpired) and expired.reservation_id == granted.reservation_id


def test_renewing_what_is_not_an_open_reservation_of_that_user_does_nothing() -> None:
    ledger = make_ledger()
    [granted, *_] = ledger.execute(authorize("r1"), NOW)
    assert isinstance(granted, ReservationGranted)
    later = NOW + timedelta(seconds=60)
    other_user = RenewReservation(reservation_id=granted.reservation_id, user_id="mallory")
    assert ledger.execute(other_user, later) == []
    assert ledger.execute(RenewReservation(reservation_id="r-unknown", user_id="u"), later) == []
    ledger.execute(usage("e1", reservation_id=granted.reservation_id), later)
    settled = RenewReservation(reservation_id=granted.reservation_id, user_id="u")
    assert ledger.execute(settled, later) == []


def test_an_authorization_decided_after_its_deadline_holds_nothing() -> None:
    ledger = make_ledger()
    request = Authorize(
        request_id="late",
        user_id="u",
        model="gpt-4o",
        max_input_tokens=1000,
        max_output_tokens=500,
        expires_at=NOW - timedelta(seconds=1),
    )
    assert ledger.execute(request, NOW) == []
    assert ledger.status("u", NOW).reserved_nanos == 0


def test_a_denial_names_the_cap_exactly_never_rounded() -> None:
    ledger = make_ledger(cap_usd="0.005")  # gpt-4o's worst case for 1000 in / 500 out is $0.0075
    [denied] = ledger.execute(authorize("r1"), NOW)
    assert isinstance(denied, ReservationDenied)
    assert "of the $0.005 cap for 2026-11" in denied.reason
