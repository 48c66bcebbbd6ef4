"""Which month a usage counts in, idempotency per user, and the dedupe window (the cap promise's rules)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budget.domain import months
from budget.domain.events import DeadLettered, ReservationExpired, ReservationGranted, UsageRecorded
from budget.domain.ledger import ConfigureUser, Ledger, RecordUsage, RenewReservation
from tests.budget.ledger_helpers import MINI_COST, authorize, make_ledger, usage

MIDNIGHT = datetime(2026, 2, 1, tzinfo=UTC)  # the end of January in UTC
BEFORE = MIDNIGHT - timedelta(seconds=1)  # 23:59:59 on 31 January


def recorded(events: Sequence[object]) -> UsageRecorded:
    assert events and isinstance(events[0], UsageRecorded), events
    return events[0]


def dead(events: Sequence[object], reason: str) -> DeadLettered:
    assert len(events) == 1 and isinstance(events[0], DeadLettered), events
    assert events[0].reason == reason, events[0].detail
    return events[0]


def grant(ledger: Ledger, request_id: str, now: datetime, user: str = "u") -> ReservationGranted:
    granted = ledger.execute(authorize(request_id, user=user, model="gpt-4o-mini"), now)[0]
    assert isinstance(granted, ReservationGranted)
    return granted


# -- the month rule ------------------------------------------------------------------------------------


def test_authorized_at_235959_and_settled_at_0005_counts_in_the_reservations_month() -> None:
    ledger = make_ledger()
    granted = grant(ledger, "q1", BEFORE)
    assert granted.month == "2026-01"
    arrived = MIDNIGHT + timedelta(minutes=5)
    call = usage("e1", ts=arrived, reservation_id=granted.reservation_id)  # stamped when it finished
    event = recorded(ledger.execute(call, arrived))
    assert (event.month, event.late, event.overshoot) == ("2026-01", False, False)
    assert ledger.spent("u", "2026-01") == (MINI_COST, 0)
    assert ledger.spent("u", "2026-02") == (0, 0)


def test_usage_without_a_reservation_counts_in_its_month_until_the_grace_ends() -> None:
    ledger = make_ledger()  # month_grace_s = 900
    ts = MIDNIGHT - timedelta(minutes=2)
    within = recorded(ledger.execute(usage("e1", ts=ts), MIDNIGHT + timedelta(minutes=14, seconds=59)))
    assert (within.month, within.late) == ("2026-01", False)
    after = MIDNIGHT + timedelta(minutes=15)
    late = recorded(ledger.execute(usage("e2", ts=ts), after))
    assert (late.month, late.late, late.ts) == ("2026-02", True, ts)  # counted now, its ts kept
    assert ledger.spent("u", "2026-01") == ledger.spent("u", "2026-02") == (MINI_COST, 0)


def test_a_backdated_usage_sent_now_without_a_reservation_counts_this_month_and_is_late() -> None:
    """The backdating dodge is closed: a usage stamped last month cannot land in a month already over."""
    ledger = make_ledger()
    now = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
    event = recorded(ledger.execute(usage("e1", ts=datetime(2026, 10, 31, 12, 0, tzinfo=UTC)), now))
    assert (event.month, event.late) == ("2026-11", True)
    assert ledger.status("u", now).spent_nanos == MINI_COST
    # A reservation id that never existed settles nothing and opens no closed month either.
    other = usage("e2", ts=datetime(2026, 10, 31, tzinfo=UTC), reservation_id="r-made-up")
    assert (recorded(ledger.execute(other, now)).month, ledger.spent("u", "2026-10")) == ("2026-11", (0, 0))


def test_a_reservation_granted_in_a_month_that_then_closed_settles_in_its_own_month() -> None:
    ledger = make_ledger()
    granted = grant(ledger, "q1", BEFORE)
    # A long call renews its hold past the end of January and the grace period.
    for minutes in (5, 10, 15, 20, 25):
        now = MIDNIGHT + timedelta(minutes=minutes)
        assert ledger.execute(RenewReservation(reservation_id=granted.reservation_id, user_id="u"), now)
    assert ledger.expire_due(MIDNIGHT + timedelta(minutes=30)) == []
    arrived = MIDNIGHT + timedelta(minutes=30)
    event = recorded(ledger.execute(usage("e1", ts=arrived, reservation_id=granted.reservation_id), arrived))
    assert (event.month, event.late, event.overshoot) == ("2026-01", False, False)  # it was reserved there
    assert ledger.spent("u", "2026-01") == (MINI_COST, 0)
    # An unreserved usage of January at the same moment is late.
    assert recorded(ledger.execute(usage("e2", ts=BEFORE), arrived)).late


def test_usage_whose_reservation_expired_counts_in_its_month_as_an_overshoot() -> None:
    ledger = make_ledger()
    granted = grant(ledger, "q1", BEFORE)
    expired_at = BEFORE + timedelta(seconds=600)
    [expiry] = ledger.expire_due(expired_at)
    assert isinstance(expiry, ReservationExpired)
    ledger.apply(expiry)
    assert ledger.status("u", expired_at).reserved_nanos == 0
    arrived = MIDNIGHT + timedelta(minutes=20)  # after the grace: only the memory of the hold places it
    event = recorded(ledger.execute(usage("e1", ts=arrived, reservation_id=granted.reservation_id), arrived))
    assert (event.month, event.late, event.overshoot) == ("2026-01", False, True)
    assert ledger.spent("u", "2026-01") == (MINI_COST, 0)
    # Another user's report naming that reservation is no overshoot of theirs: the ordinary rule places it.
    squatted = usage("m1", user="m", ts=arrived, reservation_id=granted.reservation_id)
    mallory = recorded(ledger.execute(squatted, arrived))
    assert (mallory.month, mallory.overshoot) == ("2026-02", False)


def test_an_expired_reservation_is_forgotten_once_its_month_is_settled() -> None:
    ledger = make_ledger()
    granted = grant(ledger, "q1", BEFORE)
    ledger.apply_all(ledger.expire_due(BEFORE + timedelta(seconds=600)))
    # January is settled a day and the grace after its end in UTC; the horizon passes that.
    settled = MIDNIGHT + timedelta(days=1, minutes=15)
    ledger.execute(authorize("q2", model="gpt-4o-mini"), settled + timedelta(seconds=1))
    assert ledger.months() == ["2026-02"]
    late = settled + timedelta(minutes=1)
    event = recorded(ledger.execute(usage("e1", ts=BEFORE, reservation_id=granted.reservation_id), late))
    assert (event.month, event.late, event.overshoot) == ("2026-02", True, False)


def test_the_month_boundary_in_a_non_utc_zone() -> None:
    """Tokyo (UTC+9): 14:59 UTC on 31 January is 23:59 there; February starts at 15:00 UTC, while the UTC
    calendar is still in January."""
    ledger = make_ledger()
    tokyo_midnight = datetime(2026, 1, 31, 15, 0, tzinfo=UTC)
    ledger.execute(ConfigureUser(user_id="u", timezone="Asia/Tokyo"), tokyo_midnight - timedelta(hours=1))
    ts = tokyo_midnight - timedelta(minutes=1)
    within = recorded(ledger.execute(usage("e1", ts=ts), tokyo_midnight + timedelta(minutes=10)))
    assert (within.month, within.late) == ("2026-01", False)
    late = recorded(ledger.execute(usage("e2", ts=ts), tokyo_midnight + timedelta(minutes=16)))
    assert (late.month, late.late) == ("2026-02", True)
    granted = grant(ledger, "q1", tokyo_midnight + timedelta(minutes=16))
    assert granted.month == "2026-02"
    assert ledger.status("u", tokyo_midnight + timedelta(minutes=16)).month == "2026-02"


def test_no_grace_closes_a_month_at_its_end() -> None:
    ledger = make_ledger(month_grace_s=0)
    event = recorded(ledger.execute(usage("e1", ts=BEFORE), MIDNIGHT))
    assert (event.month, event.late) == ("2026-02", True)


# -- idempotency: (user_id, event_id) ------------------------------------------------------------------


def test_the_same_event_id_for_two_users_is_two_events() -> None:
    ledger = make_ledger()
    now = datetime(2026, 11, 26, tzinfo=UTC)
    recorded(ledger.execute(usage("e1", user="alice", ts=now), now))
    recorded(ledger.execute(usage("e1", user="bob", ts=now), now))
    assert ledger.status("alice", now).spent_nanos == ledger.status("bob", now).spent_nanos == MINI_COST
    assert ledger.seen("alice", "e1") and ledger.seen("bob", "e1") and not ledger.seen("carol", "e1")


def test_id_squatting_changes_nothing_of_the_other_user() -> None:
    ledger = make_ledger()
    now = datetime(2026, 11, 26, tzinfo=UTC)
    # Mallory reports Alice's future ids first, with other content: each is Mallory's own usage.
    for i in range(3):
        squat = usage(f"a{i}", user="mallory", ts=now, input_tokens=1, output_tokens=1)
        assert recorded(ledger.execute(squat, now)).user_id == "mallory"
    for i in range(3):
        assert recorded(ledger.execute(usage(f"a{i}", user="alice", ts=now), now)).user_id == "alice"
    assert ledger.status("alice", now).spent_nanos == 3 * MINI_COST
    assert ledger.status("mallory", now).spent_nanos == 3 * (150 + 600)
    assert ledger.dead_letters == 0


def test_a_repeated_id_with_other_content_is_a_conflicting_duplicate_that_keeps_the_new_payload() -> None:
    ledger = make_ledger()
    now = datetime(2026, 11, 26, tzinfo=UTC)
    recorded(ledger.execute(usage("e1", ts=now), now))
    before = ledger.snapshot()
    changed = RecordUsage(
        event_id="e1",
        user_id="u",
        ts=now,
        model="gpt-4o-mini",
        input_tokens=5,
        output_tokens=100,
        topic="margins/usage/u",
        payload=b'{"event_id": "e1", "input_tokens": 5}',
    )
    [conflict] = ledger.decide(changed, now)
    letter = dead([conflict], "conflicting_duplicate")
    assert letter.original_payload() == changed.payload and letter.topic == "margins/usage/u"
    assert (letter.user_id, letter.event_id) == ("u", "e1")
    assert "'e1'" in letter.detail and "'u'" in letter.detail and "first report" in letter.detail
    ledger.apply(conflict)
    after = ledger.snapshot()
    assert after.pop("dead_letters") == 1 and before.pop("dead_letters") == 0
    assert after.pop("horizon") >= before.pop("horizon")  # type: ignore[operator]
    assert after == before


@pytest.mark.parametrize("field", ["ts", "model", "feature", "outcome", "reservation_id", "output_tokens"])
def test_every_field_of_the_report_is_part_of_its_content(field: str) -> None:
    ledger = make_ledger()
    now = datetime(2026, 11, 26, tzinfo=UTC)
    recorded(ledger.execute(usage("e1", ts=now), now))
    other: dict[str, object] = {
        "ts": now - timedelta(seconds=1),
        "model": "gpt-4o",
        "feature": "search",
        "outcome": "error",
        "reservation_id": "r-1",
        "output_tokens": 101,
    }
    dead(ledger.decide(usage("e1", **{"ts": now, field: other[field]}), now), "conflicting_duplicate")  # type: ignore[arg-type]


def test_an_exact_duplicate_is_no_event_whatever_zone_its_ts_is_written_in() -> None:
    ledger = make_ledger()
    now = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
    recorded(ledger.execute(usage("e1", ts=now), now))
    same_instant = now.astimezone(ZoneInfo("Asia/Kolkata"))
    assert ledger.decide(usage("e1", ts=same_instant), now) == []
    assert ledger.status("u", now).spent_nanos == MINI_COST


def test_replay_agrees_with_conflicts_squatting_and_late_usage() -> None:
    live = make_ledger()
    now = datetime(2026, 11, 30, 23, 50, tzinfo=UTC)
    log: list[object] = []
    commands = [
        usage("e1", user="a", ts=now),
        usage("e1", user="b", ts=now, input_tokens=7),
        usage("e1", user="a", ts=now, input_tokens=8),  # conflict
        usage("e1", user="a", ts=now),  # redelivery
        usage("e2", user="a", ts=now - timedelta(days=70)),  # too old
    ]
    for command in commands:
        log += live.execute(command, now)
    later = now + timedelta(minutes=30)
    log += live.execute(usage("e3", user="a", ts=now), later)  # late: December's
    replayed = make_ledger()
    replayed.apply_all(log)  # type: ignore[arg-type]
    assert replayed.snapshot() == live.snapshot()
    reasons = [event.reason for event in log if isinstance(event, DeadLettered)]
    assert reasons == ["conflicting_duplicate", "too_old"]


# -- the dedupe window -----------------------------------------------------------------------------------


def test_usage_older_than_the_dedupe_window_is_too_old_never_counted() -> None:
    """Now in March: the window holds February and March, and the last day of January (zones)."""
    ledger = make_ledger()
    now = datetime(2026, 3, 10, tzinfo=UTC)
    start = datetime(2026, 1, 31, tzinfo=UTC)
    event = recorded(ledger.execute(usage("e1", ts=start), now))
    assert (event.month, event.late) == ("2026-03", True)
    letter = dead(ledger.decide(usage("e2", ts=start - timedelta(microseconds=1)), now), "too_old")
    assert "2026-01-31T00:00:00+00:00" in letter.detail
    # An old redelivery is too old as well: it is a dead letter, never counted twice.
    dead(ledger.decide(usage("e0", ts=datetime(2025, 12, 1, tzinfo=UTC)), now), "too_old")


def test_keys_leave_the_index_when_their_month_leaves_the_window() -> None:
    ledger = make_ledger()
    january = datetime(2026, 1, 15, tzinfo=UTC)
    recorded(ledger.execute(usage("e1", ts=january), january))
    march = datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC)
    ledger.execute(authorize("q1", model="gpt-4o-mini"), march)  # the ledger's clock moves to March
    assert not ledger.seen("u", "e1")
    dead(ledger.decide(usage("e1", ts=january), march), "too_old")


ZONES = ("UTC", "America/Los_Angeles", "Asia/Tokyo", "America/Santiago", "Asia/Tehran", "Etc/GMT+12")
INSTANTS = st.datetimes(
    min_value=datetime(2001, 1, 1),
    max_value=datetime(2199, 1, 1),
    timezones=st.sampled_from([UTC, ZoneInfo("Asia/Kolkata"), ZoneInfo("America/Santiago")]),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(INSTANTS, st.sampled_from(ZONES)), max_size=60))
def test_month_lookups_agree_with_a_time_zone_conversion_whatever_came_before(
    asked: list[tuple[datetime, str]],
) -> None:
    """The month functions remember the last month they found; any sequence of instants gives the months a
    plain conversion does."""
    for ts, zone in asked:
        local = ts.astimezone(ZoneInfo(zone))
        assert months.month_in(ts, zone) == f"{local.year:04d}-{local.month:02d}"
        utc = ts.astimezone(UTC)
        assert months.utc_month_number(ts) == (utc.year - 2000) * 12 + utc.month - 1
        shifted = utc + timedelta(days=1)
        assert months.window_month_number(ts) == (shifted.year - 2000) * 12 + shifted.month - 1
