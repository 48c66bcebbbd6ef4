"""The ledger against a plain-dict model, with a real store: random commands, the model's rules restated.

Checked at every step: spend per user-month equals the sum of the distinct events the model counted (for
every month the ledger still keeps; a month it dropped can no longer change by the model's rules), the
users who authorize every call never pass the cap, money is never created or lost (the usage events add
up to the model's spend), and a ledger restored from a snapshot taken midway -- then fed the same events
-- stays equal to the live one. At the end: a replay of the store equals the live ledger.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import budget.domain.seen
from budget.domain.events import (
    DeadLettered,
    Event,
    ReservationDenied,
    ReservationExpired,
    ReservationGranted,
    UsageRecorded,
)
from budget.domain.ledger import Authorize, Command, ConfigureUser, Ledger, LedgerSnapshot, RecordUsage
from budget.store.event_store import EventStore
from tests.budget.ledger_helpers import CATALOG, make_config

GUARDED = {"g1": "UTC", "g2": "America/Los_Angeles"}  # every call of theirs is authorized first
FREE = {"f1": "Asia/Tokyo"}  # also reports usage it never authorized, sometimes days late
CASUAL = {"c1": "UTC"}  # never configured: leaves the ledger's index once it holds nothing
ZONES = {**GUARDED, **FREE, **CASUAL}
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-5-nano")
TOKENS = st.integers(min_value=0, max_value=6000)
GRACE = timedelta(seconds=900)
DAY = timedelta(days=1)

Held = tuple[ReservationGranted, int, int]  # the grant and the call's max input and output tokens


def local_month(ts: datetime, zone: str) -> str:
    return ts.astimezone(ZoneInfo(zone)).strftime("%Y-%m")


def next_month_start(month: str, zone: str) -> datetime:
    year, number = int(month[:4]), int(month[5:])
    year, number = (year + 1, 1) if number == 12 else (year, number + 1)
    return datetime(year, number, 1, tzinfo=ZoneInfo(zone))


def window_start(now: datetime) -> datetime:
    """The model's dedupe window: the previous UTC month and this one, and one day before them."""
    previous = (datetime(now.year, now.month, 1, tzinfo=UTC) - DAY).replace(day=1)
    return previous - DAY


def settled_after(month: str) -> datetime:
    """The model's rule: a month takes no usage by its timestamp a day and the grace after its UTC end."""
    return next_month_start(month, "UTC") + DAY + GRACE


class LedgerMachine(RuleBasedStateMachine):
    """Commands go decide -> apply -> store.append, as in the enforcer; the model is plain dicts."""

    def __init__(self) -> None:
        super().__init__()
        # Tiny dedupe stages: every few usages merge a partition run, as millions would.
        self.stage_limit = budget.domain.seen.STAGE_LIMIT
        budget.domain.seen.STAGE_LIMIT = 2
        self.tmp = tempfile.TemporaryDirectory()
        self.store = EventStore.open(Path(self.tmp.name) / "store", flush_interval=None)
        self.config = make_config(cap_usd="0.01", at_cap="degrade", degrade_model="gpt-4o-mini")
        self.ledger = Ledger(self.config, CATALOG)
        self.restored: Ledger | None = None
        self.appended = 0
        self.now = datetime(2026, 1, 31, 22, 0, tzinfo=UTC)  # month boundaries come quickly
        self.spend: dict[tuple[str, str], int] = defaultdict(int)
        self.recorded_cost = 0
        self.sent: dict[tuple[str, str], RecordUsage] = {}
        self.open: dict[str, Held] = {}
        self.expired: dict[str, tuple[ReservationGranted, int, int, datetime]] = {}
        self.serial = 0
        for user, zone in {**GUARDED, **FREE}.items():
            self.run(ConfigureUser(user_id=user, timezone=zone))

    def run(self, command: Command) -> list[Event]:
        events = self.ledger.decide(command, self.now)
        self.take(events)
        return events

    def take(self, events: list[Event]) -> None:
        for applied in events:
            self.ledger.apply(applied)
            if self.restored is not None:
                self.restored.apply(applied)
            if isinstance(applied, UsageRecorded):
                self.recorded_cost += applied.cost_nanos
        self.store.append(events)
        self.appended += len(events)

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    # -- the model's month rule ------------------------------------------------------------------------

    def forget_after(self, granted: ReservationGranted, expired_at: datetime) -> datetime:
        return max(settled_after(granted.month), expired_at + GRACE)

    def place(self, command: RecordUsage) -> tuple[str, bool, bool]:
        user, rid = command.user_id, command.reservation_id
        if rid in self.open and self.open[rid][0].user_id == user:
            return self.open[rid][0].month, False, False
        if rid in self.expired:
            granted, _, _, expired_at = self.expired[rid]
            if granted.user_id == user and self.now < self.forget_after(granted, expired_at):
                return granted.month, False, True
        zone = ZONES[user]
        own, arrived = local_month(command.ts, zone), local_month(self.now, zone)
        if own >= arrived or self.now < next_month_start(own, zone) + GRACE:
            return own, False, False
        return arrived, True, False

    def record(self, command: RecordUsage) -> None:
        if command.ts < window_start(self.now):
            self.unchanged_except_counters(command, "too_old")
            return
        month, late, overshoot = self.place(command)
        event("usage: " + ("overshoot" if overshoot else "late" if late else "in its month"))
        events = self.run(command)
        usage = events[0]
        assert isinstance(usage, UsageRecorded), usage
        assert (usage.month, usage.late, usage.overshoot) == (month, late, overshoot)
        cost = CATALOG.cost_nanos(
            command.model, command.input_tokens, command.output_tokens, command.cached_input_tokens
        )
        assert usage.cost_nanos == cost
        self.spend[(command.user_id, month)] += cost
        self.sent[(command.user_id, command.event_id)] = command
        if command.reservation_id is not None:
            held = self.open.get(command.reservation_id)
            if held is not None and held[0].user_id == command.user_id:
                del self.open[command.reservation_id]

    def unchanged_except_counters(self, command: Command, reason: str) -> None:
        """A dead letter: nothing changes but the counters, and what its time lets the ledger forget."""
        before = self.ledger.snapshot()
        events = self.run(command)
        assert [(type(e), getattr(e, "reason", None)) for e in events] == [(DeadLettered, reason)]
        event(f"dead letter: {reason}")
        after = self.ledger.snapshot()
        for same in ("reservations", "settings", "denials"):
            assert after[same] == before[same], same
        for forgetting in ("seen", "crossed"):
            assert after[forgetting] <= before[forgetting], forgetting  # type: ignore[operator]
        for key, value in after["months"].items():  # type: ignore[attr-defined]
            assert before["months"][key] == value, key  # type: ignore[index]
        assert after["dead_letters"] == before["dead_letters"] + 1  # type: ignore[operator]

    # -- rules -----------------------------------------------------------------------------------------

    @rule(user=st.sampled_from(sorted(ZONES)), model=st.sampled_from(MODELS), i=TOKENS, o=TOKENS)
    def authorize(self, user: str, model: str, i: int, o: int) -> None:
        request = Authorize(
            request_id=self.next_id("q"), user_id=user, model=model, max_input_tokens=i, max_output_tokens=o
        )
        decision = self.run(request)[0]
        if isinstance(decision, ReservationGranted):
            assert decision.month == local_month(self.now, ZONES[user])
            self.open[decision.reservation_id] = (decision, i, o)
        else:
            assert isinstance(decision, ReservationDenied)

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        reservation_id = data.draw(st.sampled_from(sorted(self.open)))
        granted, max_in, max_out = self.open[reservation_id]
        used_in = data.draw(st.integers(0, max_in))
        self.record(
            RecordUsage(
                event_id=self.next_id("e"),
                user_id=granted.user_id,
                ts=data.draw(st.sampled_from([granted.ts, self.now])),  # stamped at the start or the end
                model=granted.model,
                input_tokens=used_in,
                cached_input_tokens=data.draw(st.integers(0, used_in)),
                output_tokens=data.draw(st.integers(0, max_out)),
                reservation_id=reservation_id,
            )
        )

    @rule(
        user=st.sampled_from(sorted({**FREE, **CASUAL})),
        model=st.sampled_from(MODELS),
        i=TOKENS,
        o=TOKENS,
        late=TOKENS,
    )
    def unreserved_usage(self, user: str, model: str, i: int, o: int, late: int) -> None:
        ts = self.now - timedelta(minutes=late)  # up to four days late
        command = RecordUsage(
            event_id=self.next_id("e"), user_id=user, ts=ts, model=model, input_tokens=i, output_tokens=o
        )
        self.record(command)

    @precondition(lambda self: any(g.user_id in FREE for g, *_ in self.expired.values()))
    @rule(data=st.data())
    def settle_after_expiry(self, data: st.DataObject) -> None:
        """A free user's call reported after its reservation expired: still spent, so still recorded."""
        candidates = sorted(rid for rid, (g, *_) in self.expired.items() if g.user_id in FREE)
        granted, max_in, max_out, _ = self.expired[data.draw(st.sampled_from(candidates))]
        self.record(
            RecordUsage(
                event_id=self.next_id("e"),
                user_id=granted.user_id,
                ts=data.draw(st.sampled_from([self.now, granted.ts])),
                model=granted.model,
                input_tokens=max_in,
                output_tokens=max_out,
                reservation_id=granted.reservation_id,
            )
        )

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        command = self.sent[data.draw(st.sampled_from(sorted(self.sent)))]
        before = self.ledger.snapshot()
        events = self.run(command)
        if events:  # only once its ts has left the dedupe window
            assert [(type(e), getattr(e, "reason", "")) for e in events] == [(DeadLettered, "too_old")]
        else:
            assert self.ledger.snapshot() == before

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def conflicting_duplicate(self, data: st.DataObject) -> None:
        sent = self.sent[data.draw(st.sampled_from(sorted(self.sent)))]
        changed = RecordUsage(
            event_id=sent.event_id,
            user_id=sent.user_id,
            ts=sent.ts,
            model=sent.model,
            input_tokens=sent.input_tokens + 1,
            output_tokens=sent.output_tokens,
            reservation_id=sent.reservation_id,
        )
        reason = "too_old" if sent.ts < window_start(self.now) else "conflicting_duplicate"
        self.unchanged_except_counters(changed, reason)

    @precondition(lambda self: any(user in GUARDED for user, _ in self.sent))
    @rule(data=st.data())
    def squat(self, data: st.DataObject) -> None:
        """The free user reuses a guarded user's event id: it is the free user's own event."""
        _, event_id = data.draw(st.sampled_from(sorted(k for k in self.sent if k[0] in GUARDED)))
        if ("f1", event_id) in self.sent:
            return
        self.record(
            RecordUsage(
                event_id=event_id,
                user_id="f1",
                ts=self.now,
                model="gpt-5-nano",
                input_tokens=7,
                output_tokens=3,
            )
        )

    @rule(days=st.integers(70, 400))
    def too_old(self, days: int) -> None:
        command = RecordUsage(
            event_id=self.next_id("o"),
            user_id="f1",
            ts=self.now - timedelta(days=days),
            model="gpt-4o",
            input_tokens=9,
            output_tokens=9,
        )
        self.unchanged_except_counters(command, "too_old")

    @rule(user=st.sampled_from(sorted(ZONES)))
    def unknown_model(self, user: str) -> None:
        command = RecordUsage(
            event_id=self.next_id("x"),
            user_id=user,
            ts=self.now,
            model="free-lunch",
            input_tokens=9,
            output_tokens=9,
        )
        self.unchanged_except_counters(command, "unknown_model")

    @rule(cents=st.integers(0, 10))
    def reconfigure_free_user(self, cents: int) -> None:
        self.run(ConfigureUser(user_id="f1", cap_usd=Decimal(cents) / 100))

    @rule(seconds=st.integers(1, 4 * 3600))
    def advance(self, seconds: int) -> None:
        self.move(timedelta(seconds=seconds))

    @rule(days=st.integers(1, 25))
    def advance_days(self, days: int) -> None:
        self.move(timedelta(days=days))

    def move(self, step: timedelta) -> None:
        self.now += step
        expired = self.ledger.expire_due(self.now)
        due = {rid for rid, (g, _, _) in self.open.items() if g.expires_at <= self.now}
        assert {e.reservation_id for e in expired if isinstance(e, ReservationExpired)} == due
        indexed = len(self.ledger.to_snapshot(0).user_ends)
        self.take(expired)
        if len(self.ledger.to_snapshot(0).user_ends) < indexed:
            event("idle users left the index")
        for rid in sorted(due):
            granted, max_in, max_out = self.open.pop(rid)
            self.expired[rid] = (granted, max_in, max_out, self.now)

    @rule()
    def flush(self) -> None:
        self.store.flush()

    @precondition(lambda self: self.restored is None)
    @rule()
    def take_a_snapshot(self) -> None:
        """Restore a second ledger from a snapshot (through its encoded parts); it then takes every event."""
        meta, parts = self.ledger.to_snapshot(self.appended).encode()
        decoded = LedgerSnapshot.decode(meta, {name: part.copy() for name, part in parts.items()})
        assert decoded.seq == self.appended
        self.restored = Ledger.from_snapshot(self.config, CATALOG, decoded)

    # -- invariants ------------------------------------------------------------------------------------

    @invariant()
    def spend_is_the_sum_of_distinct_events(self) -> None:
        reserved: dict[tuple[str, str], int] = defaultdict(int)
        for granted, _, _ in self.open.values():
            reserved[(granted.user_id, granted.month)] += granted.amount_nanos
        kept = set(self.ledger.months())
        held = {g.month for g, *_ in self.open.values()} | {
            g.month for g, _, _, at in self.expired.values() if self.now < self.forget_after(g, at)
        }
        for key in set(self.spend) | set(reserved):
            month = key[1]
            if month in kept:
                assert self.ledger.spent(*key) == (self.spend[key], reserved[key]), key
            else:  # dropped: it can no longer change
                assert self.now >= settled_after(month) and month not in held, key
                event("a month was dropped")
        assert {r.reservation_id for r in self.ledger.open_reservations()} == set(self.open)

    @invariant()
    def money_is_never_created_or_lost(self) -> None:
        assert self.recorded_cost == sum(self.spend.values())

    @invariant()
    def authorized_users_never_exceed_the_cap(self) -> None:
        cap = self.config.default_plan.cap_nanos
        for (user, month), spent in self.spend.items():
            if user in GUARDED:
                assert spent + self.ledger.spent(user, month)[1] <= cap, (user, month)

    @invariant()
    def the_restored_ledger_equals_the_live_one(self) -> None:
        if self.restored is not None:
            assert self.restored.snapshot() == self.ledger.snapshot()

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
            months = again.snapshot()["months"]
            assert isinstance(months, dict) and all(reserved == 0 for _, reserved in months.values())
        finally:
            budget.domain.seen.STAGE_LIMIT = self.stage_limit
            self.store.close()
            self.tmp.cleanup()


LedgerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLedgerMachine = LedgerMachine.TestCase
