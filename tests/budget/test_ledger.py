"""The pure ledger: months in the user's zone, reservations, degrade/deny, dedupe, dead letters, limits."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import get_args
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from budget.domain.catalog import default_catalog
from budget.domain.config import EnforcerConfig, Plan
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
    Command,
    ConfigureUser,
    Ledger,
    RecordUsage,
    RenewReservation,
    month_in,
    reservation_id_for,
    worst_case_nanos,
)
from budget.store.event_store import EventStore

NOW = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
CATALOG = default_catalog()


def make_config(
    cap_usd: str = "1", at_cap: str = "block", degrade_model: str | None = None
) -> EnforcerConfig:
    """A config with one default plan (shared with the state machine test)."""
    plan = Plan(
        name="default",
        cap_nanos=int(Decimal(cap_usd) * 1_000_000_000),
        at_cap=at_cap,  # type: ignore[arg-type]
        degrade_model=degrade_model,
        soft_threshold_pct=80,
    )
    pro = Plan(
        name="pro", cap_nanos=50_000_000_000, at_cap="block", degrade_model=None, soft_threshold_pct=90
    )
    return EnforcerConfig(default_plan=plan, plans={"pro": pro}, reservation_ttl_s=600)


def usage(
    event_id: str, user: str = "u", ts: datetime = NOW, model: str = "gpt-4o-mini", **kw: object
) -> RecordUsage:
    fields: dict[str, object] = {"input_tokens": 1000, "output_tokens": 100, **kw}
    return RecordUsage(event_id=event_id, user_id=user, ts=ts, model=model, **fields)  # type: ignore[arg-type]


def authorize(
    request_id: str, user: str = "u", model: str = "gpt-4o", tokens: tuple[int, int] = (1000, 500)
) -> Authorize:
    return Authorize(
        request_id=request_id,
        user_id=user,
        model=model,
        max_input_tokens=tokens[0],
        max_output_tokens=tokens[1],
    )


def test_usage_is_priced_from_the_catalog_and_counted_once() -> None:
    ledger = Ledger(make_config(), CATALOG)
    [event] = ledger.execute(usage("e1"), NOW)
    assert isinstance(event, UsageRecorded)
    assert event.cost_nanos == 1000 * 150 + 100 * 600
    assert event.month == "2026-11"
    assert ledger.seen("e1")
    assert ledger.execute(usage("e1"), NOW) == []  # redelivered
    ledger.apply(event)  # replayed twice anyway
    assert ledger.status("u", NOW).spent_nanos == 210_000


def test_users_are_those_with_spend_or_reservations() -> None:
    ledger = Ledger(make_config(), CATALOG)
    assert ledger.users() == set()
    ledger.execute(ConfigureUser(user_id="only-configured", plan="pro"), NOW)
    ledger.execute(usage("e1", user="a"), NOW)
    ledger.execute(usage("e2", user="a", ts=NOW - timedelta(days=40)), NOW)
    ledger.execute(authorize("r1", user="b"), NOW)
    assert ledger.users() == {"a", "b"}
    months = ledger.snapshot()["months"]
    assert isinstance(months, dict)
    assert ledger.users() == {user for user, _month in months}


def test_late_usage_at_2330_on_31_january_in_los_angeles_is_januarys() -> None:
    ledger = Ledger(make_config(), CATALOG)
    ledger.execute(ConfigureUser(user_id="u", timezone="America/Los_Angeles"), NOW)
    late = datetime(2026, 2, 1, 7, 30, tzinfo=UTC)  # 23:30 on 31 January in Los Angeles (PST, UTC-8)
    [event] = ledger.execute(usage("e1", ts=late), NOW)
    assert isinstance(event, UsageRecorded) and event.month == "2026-01"
    assert ledger.spent("u", "2026-01") == (210_000, 0)
    assert ledger.spent("u", "2026-02") == (0, 0)
    assert month_in(late, "UTC") == "2026-02"
    # The month was stored with the event: a later zone change does not move history.
    ledger.execute(ConfigureUser(user_id="u", timezone="UTC"), NOW)
    assert ledger.spent("u", "2026-01") == (210_000, 0)


def test_unknown_model_is_dead_lettered_never_charged() -> None:
    ledger = Ledger(make_config(), CATALOG)
    events = ledger.decide(usage("e1", model="gpt-9-ultra"), NOW)
    assert [type(e) for e in events] == [DeadLettered]
    dead = events[0]
    assert isinstance(dead, DeadLettered) and dead.reason == "unknown_model" and dead.event_id == "e1"
    ledger.apply(dead)
    assert not ledger.seen("e1")
    assert ledger.status("u", NOW).spent_nanos == 0
    denied = ledger.decide(authorize("r1", model="gpt-9-ultra"), NOW)
    assert [type(e) for e in denied] == [DeadLettered, ReservationDenied]


def test_dead_letter_keeps_the_original_payload() -> None:
    ledger = Ledger(make_config(), CATALOG)
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
def test_bad_token_counts_are_dead_lettered(kw: dict[str, int]) -> None:
    ledger = Ledger(make_config(), CATALOG)
    [dead] = ledger.decide(usage("e1", **kw), NOW)
    assert isinstance(dead, DeadLettered) and dead.reason == "bad_tokens"


def test_naive_timestamp_is_dead_lettered() -> None:
    ledger = Ledger(make_config(), CATALOG)
    [dead] = ledger.decide(usage("e1", ts=datetime(2026, 11, 1)), NOW)
    assert isinstance(dead, DeadLettered) and dead.reason == "bad_timestamp"


def test_settlement_replaces_the_estimate_and_expiry_returns_it() -> None:
    ledger = Ledger(make_config(), CATALOG)
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
    ledger = Ledger(make_config(), CATALOG)
    [granted] = ledger.execute(authorize("r1", user="alice"), NOW)
    assert isinstance(granted, ReservationGranted)
    ledger.execute(usage("e1", user="mallory", reservation_id=granted.reservation_id), NOW)
    assert ledger.reservation(granted.reservation_id) is not None


def test_redelivered_authorization_reserves_once() -> None:
    ledger = Ledger(make_config(), CATALOG)
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


def test_configure_user_sets_cap_plan_and_zone_and_rejects_bad_values() -> None:
    ledger = Ledger(make_config(), CATALOG)
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


def test_lowering_a_cap_under_the_spend_announces_the_cap() -> None:
    ledger = Ledger(make_config(), CATALOG)
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
    ledger = Ledger(make_config(), CATALOG)
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


# -- the ledger against a plain-dict model, with a real store -------------------------------------------

GUARDED = {"g1": "UTC", "g2": "America/Los_Angeles"}  # every call of theirs is authorized first
FREE = {"f1": "Asia/Tokyo"}  # also reports usage it never authorized, sometimes days late
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-5-nano")
TOKENS = st.integers(min_value=0, max_value=6000)


class LedgerMachine(RuleBasedStateMachine):
    """Commands go decide -> apply -> store.append, as in the enforcer; the model is plain dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.store = EventStore.open(Path(self.tmp.name) / "store", flush_interval=None)
        self.config = make_config(cap_usd="0.01", at_cap="degrade", degrade_model="gpt-4o-mini")
        self.ledger = Ledger(self.config, CATALOG)
        self.now = datetime(2026, 1, 31, 22, 0, tzinfo=UTC)  # month boundaries come quickly
        self.spend: dict[tuple[str, str], int] = defaultdict(int)
        self.sent: dict[str, RecordUsage] = {}
        self.open: dict[str, tuple[ReservationGranted, int, int]] = {}
        self.expired: list[tuple[ReservationGranted, int, int]] = []
        self.serial = 0
        for user, zone in {**GUARDED, **FREE}.items():
            self.run(ConfigureUser(user_id=user, timezone=zone))

    def run(self, command: Command) -> list[Event]:
        events = self.ledger.decide(command, self.now)
        for event in events:
            self.ledger.apply(event)
        self.store.append(events)
        return events

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def month(self, user: str, ts: datetime) -> str:
        zone = {**GUARDED, **FREE}[user]
        return ts.astimezone(ZoneInfo(zone)).strftime("%Y-%m")

    def record(self, command: RecordUsage) -> None:
        events = self.run(command)
        assert isinstance(events[0], UsageRecorded)
        cost = CATALOG.cost_nanos(
            command.model, command.input_tokens, command.output_tokens, command.cached_input_tokens
        )
        assert events[0].cost_nanos == cost
        self.spend[(command.user_id, self.month(command.user_id, command.ts))] += cost
        self.sent[command.event_id] = command

    @rule(
        user=st.sampled_from(sorted({**GUARDED, **FREE})), model=st.sampled_from(MODELS), i=TOKENS, o=TOKENS
    )
    def authorize(self, user: str, model: str, i: int, o: int) -> None:
        request = Authorize(
            request_id=self.next_id("q"), user_id=user, model=model, max_input_tokens=i, max_output_tokens=o
        )
        decision = self.run(request)[0]
        if isinstance(decision, ReservationGranted):
            assert decision.month == self.month(user, self.now)
            self.open[decision.reservation_id] = (decision, i, o)
        else:
            assert isinstance(decision, ReservationDenied)

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        reservation_id = data.draw(st.sampled_from(sorted(self.open)))
        granted, max_in, max_out = self.open.pop(reservation_id)
        used_in = data.draw(st.integers(0, max_in))
        # The call happened when it was authorized and is reported now: its month is the grant's.
        self.record(
            RecordUsage(
                event_id=self.next_id("e"),
                user_id=granted.user_id,
                ts=granted.ts,
                model=granted.model,
                input_tokens=used_in,
                cached_input_tokens=data.draw(st.integers(0, used_in)),
                output_tokens=data.draw(st.integers(0, max_out)),
                reservation_id=reservation_id,
            )
        )

    @rule(user=st.sampled_from(sorted(FREE)), model=st.sampled_from(MODELS), i=TOKENS, o=TOKENS, late=TOKENS)
    def unreserved_usage(self, user: str, model: str, i: int, o: int, late: int) -> None:
        ts = self.now - timedelta(minutes=late)
        self.record(
            RecordUsage(
                event_id=self.next_id("e"), user_id=user, ts=ts, model=model, input_tokens=i, output_tokens=o
            )
        )

    @precondition(lambda self: bool(self.expired))
    @rule(data=st.data())
    def settle_after_expiry(self, data: st.DataObject) -> None:
        """A free user's call reported after its reservation expired: still spent, so still recorded."""
        candidates = [e for e in self.expired if e[0].user_id in FREE]
        if not candidates:
            return
        granted, max_in, max_out = data.draw(st.sampled_from(candidates))
        self.record(
            RecordUsage(
                event_id=self.next_id("e"),
                user_id=granted.user_id,
                ts=granted.ts,
                model=granted.model,
                input_tokens=max_in,
                output_tokens=max_out,
                reservation_id=granted.reservation_id,
            )
        )

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        before = self.ledger.snapshot()
        assert self.run(self.sent[data.draw(st.sampled_from(sorted(self.sent)))]) == []
        assert self.ledger.snapshot() == before

    @rule(user=st.sampled_from(sorted({**GUARDED, **FREE})))
    def unknown_model(self, user: str) -> None:
        command = RecordUsage(
            event_id=self.next_id("x"),
            user_id=user,
            ts=self.now,
            model="free-lunch",
            input_tokens=9,
            output_tokens=9,
        )
        assert [type(e) for e in self.run(command)] == [DeadLettered]

    @rule(cents=st.integers(0, 10))
    def reconfigure_free_user(self, cents: int) -> None:
        self.run(ConfigureUser(user_id="f1", cap_usd=Decimal(cents) / 100))

    @rule(seconds=st.integers(1, 4 * 3600))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        expired = self.ledger.expire_due(self.now)
        due = {rid for rid, (g, _, _) in self.open.items() if g.expires_at <= self.now}
        assert {e.reservation_id for e in expired if isinstance(e, ReservationExpired)} == due
        for event in expired:
            self.ledger.apply(event)
        self.store.append(expired)
        self.expired += [self.open.pop(rid) for rid in sorted(due)]

    @rule()
    def flush(self) -> None:
        self.store.flush()

    @invariant()
    def spend_is_the_sum_of_distinct_events(self) -> None:
        reserved: dict[tuple[str, str], int] = defaultdict(int)
        for granted, _, _ in self.open.values():
            reserved[(granted.user_id, granted.month)] += granted.amount_nanos
        for key in set(self.spend) | set(reserved):
            assert self.ledger.spent(*key) == (self.spend[key], reserved[key]), key
        assert {r.reservation_id for r in self.ledger.open_reservations()} == set(self.open)

    @invariant()
    def authorized_users_never_exceed_the_cap(self) -> None:
        cap = self.config.default_plan.cap_nanos
        for (user, month), spent in self.spend.items():
            if user in GUARDED:
                assert spent + self.ledger.spent(user, month)[1] <= cap, (user, month)

    def teardown(self) -> None:
        try:
            replayed = Ledger(self.config, CATALOG)
            replayed.apply_all(self.store.replay())
            assert replayed.snapshot() == self.ledger.snapshot()
            self.store.close()
            with EventStore.open(Path(self.tmp.name) / "store", flush_interval=None) as reopened:
                again = Ledger(self.config, CATALOG)
                again.apply_all(reopened.replay())
            assert again.snapshot() == self.ledger.snapshot()
            # Every reservation settles or expires: past the TTL nothing is held.
            later = self.now + timedelta(seconds=self.config.reservation_ttl_s)
            again.apply_all(again.expire_due(later))
            assert again.open_reservations() == []
            assert all(reserved == 0 for _, reserved in again.snapshot()["months"].values())  # type: ignore[attr-defined]
        finally:
            self.store.close()
            self.tmp.cleanup()


LedgerMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLedgerMachine = LedgerMachine.TestCase


def test_a_renewed_reservation_expires_a_ttl_after_its_last_renewal() -> None:
    ledger = Ledger(make_config(), CATALOG)
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
    ledger = Ledger(make_config(), CATALOG)
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
    ledger = Ledger(make_config(), CATALOG)
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
