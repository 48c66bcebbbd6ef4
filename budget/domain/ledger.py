"""The pure ledger: per-user monthly spend folded from events, and decisions made against it.

`decide(command, now)` answers a command with the events it causes and changes nothing; `apply(event)`
folds one event into the state. The enforcer runs decide then apply, command after command, so every
decision sees every earlier reservation; a restart applies every stored event in order (replay is a fold),
or restores a snapshot (`to_snapshot` / `from_snapshot`) and applies the events after it. No clock is read
here: `now` is passed in, and everything derived from it (a reservation's expiry, the month a usage counts
in) is written into the events, so a replay never depends on when it runs.

Money is integer nano-dollars, per user and calendar month in the user's time zone ("YYYY-MM"): a new
month is a new key, so nothing ever resets.

Which month a usage counts in (the cap promise):

- settling an open reservation of its user (`reservation_id`): the reservation's month, fixed when the
  call was authorized, whenever the usage arrives;
- its reservation expired before it arrived: the expired reservation's month, flagged `overshoot` (spent
  past the hold that covered it). Expired reservations are remembered while their month can still change;
- otherwise (no reservation, or one that never existed or is another user's): the month of its `ts` in
  the user's zone while that month is open -- until its end plus `month_grace_s` by the enforcer's clock
  -- and after that the month it arrives in, flagged `late` (its `ts` kept). A closed month never changes,
  except by the settlement of calls reserved in it.

Idempotency: a usage's key is (user_id, event_id). A repeated key with the same content is a redelivery
(no event); with different content it is a `conflicting_duplicate` dead letter. Keys are held while their
`ts` is in the dedupe window -- the current and the previous UTC month, and one day before -- and usage
with an older `ts` is a `too_old` dead letter: it could not be told from one already counted.

Bounded state: the ledger keeps what decisions need and drops what can no longer change -- month totals
(numpy arrays by user index, budget.domain.tallies) of months that can still change, the dedupe index of
the window (budget.domain.seen), open and remembered reservations. What is dropped is decided by the
ledger's own clock, the horizon: the latest decision time its events show (a usage counts as its `ts`
less MAX_AHEAD, the furthest ahead of the enforcer's clock a usage may be). Live, replayed and restored
ledgers therefore forget alike; decisions use the later of `now` and the horizon.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import assert_never

import msgspec
import numpy as np

from budget.domain.commands import (
    Authorize,
    Command,
    ConfigureUser,
    RecordUsage,
    RenewReservation,
    UserStatus,
    dead_letter,
    limits_reached,
    reservation_id_for,
    state_of,
    usage_event,
    worst_case_nanos,
)
from budget.domain.config import EnforcerConfig, Plan, check_timezone, usd_to_nanos
from budget.domain.events import (
    DeadLettered,
    Decision,
    Event,
    Limit,
    LimitCrossed,
    ReservationDenied,
    ReservationExpired,
    ReservationGranted,
    ReservationRenewed,
    UsageRecorded,
    UserConfigured,
)
from budget.domain.expiry import ExpiryQueue
from budget.domain.months import (
    month_end,
    month_in,
    month_number_start,
    utc_month_number,
    window_month_number,
)
from budget.domain.prices import PriceCatalog, nanos_to_usd
from budget.domain.retention import OpenMonths, Remembered
from budget.domain.seen import DIGEST_MASK, SeenIndex, content_digest, usage_key
from budget.domain.snapshot import LedgerSnapshot, MonthArrays
from budget.domain.tallies import CAP_FLAG, SOFT_FLAG, MonthTally, Settings, UserTable
from budget.errors import ConfigError, SnapshotError

__all__ = [
    "MAX_AHEAD",
    "Authorize",
    "Command",
    "ConfigureUser",
    "Ledger",
    "LedgerSnapshot",
    "RecordUsage",
    "RenewReservation",
    "UserStatus",
    "month_in",
    "reservation_id_for",
    "worst_case_nanos",
]

# A usage may be stamped at most this far ahead of the enforcer's clock (the wire allows less): beyond it,
# it would move the ledger's clock, and with it what the ledger forgets, ahead of time.
MAX_AHEAD = timedelta(hours=1)
_FLAGS: dict[Limit, int] = {"soft": SOFT_FLAG, "cap": CAP_FLAG}


class Ledger:
    """Per-user monthly spend, reservations and settings, folded from events; decides commands."""

    def __init__(self, config: EnforcerConfig, prices: PriceCatalog) -> None:
        self.config = config
        self.prices = prices
        self._grace = timedelta(seconds=config.month_grace_s)
        self._users = UserTable()
        self._months = OpenMonths(self._grace)
        self._reservations: dict[str, ReservationGranted] = {}
        self._expiry = ExpiryQueue()
        self._seen = SeenIndex()
        # The last usage decided, with its key, digest and window month, until the next apply.
        self._decided: tuple[UsageRecorded, int, int, int] | None = None
        self.dead_letters = 0
        self.denials = 0

    # -- reading ----------------------------------------------------------------------------------

    def seen(self, user_id: str, event_id: str) -> bool:
        """Whether this user's usage event with this id was counted (and is still in the dedupe window)."""
        return self._seen.get(usage_key(user_id, event_id)) is not None

    def _settings(self, user_id: str) -> tuple[int | None, Settings]:
        index = self._users.find(user_id)
        return index, self._users.settings(index)

    def _zone(self, settings: Settings) -> str:
        return settings.timezone or self.config.default_timezone

    def _plan(self, settings: Settings) -> Plan:
        if not settings.plan:
            return self.config.default_plan
        return self.config.plans.get(settings.plan, self.config.default_plan)

    def _cap(self, settings: Settings) -> int:
        return self._plan(settings).cap_nanos if settings.cap_nanos is None else settings.cap_nanos

    def timezone(self, user_id: str) -> str:
        """The user's IANA time zone (the config's default unless an admin set one)."""
        return self._zone(self._settings(user_id)[1])

    def plan(self, user_id: str) -> Plan:
        """The user's plan; a plan no longer in the config falls back to the default one."""
        return self._plan(self._settings(user_id)[1])

    def cap_nanos(self, user_id: str) -> int:
        """The user's own cap if an admin set one, else their plan's."""
        return self._cap(self._settings(user_id)[1])

    def month_of(self, user_id: str, ts: datetime) -> str:
        """The month a timestamp falls in for this user."""
        return month_in(ts, self.timezone(user_id))

    def status(self, user_id: str, now: datetime) -> UserStatus:
        """The user's current month: spent, reserved, cap, remaining and state."""
        index, settings = self._settings(user_id)
        zone = self._zone(settings)
        month = month_in(now, zone)
        spent, reserved = self._totals(index, month)
        cap = self._cap(settings)
        return UserStatus(
            user_id=user_id,
            month=month,
            spent_nanos=spent,
            reserved_nanos=reserved,
            cap_nanos=cap,
            remaining_nanos=max(0, cap - spent - reserved),
            state=state_of(spent, reserved, cap, self._plan(settings).soft_threshold_pct),
            plan=settings.plan,
            timezone=zone,
        )

    def spent(self, user_id: str, month: str) -> tuple[int, int]:
        """(spent, reserved) nano-dollars of one user-month; (0, 0) for a month the ledger no longer keeps
        (it can no longer change; the store has its history)."""
        return self._totals(self._users.find(user_id), month)

    def _totals(self, index: int | None, month: str) -> tuple[int, int]:
        tally = self._months.get(month)
        return (0, 0) if tally is None else tally.totals(index)

    def months(self) -> list[str]:
        """The months the ledger keeps: those that can still change."""
        return sorted(self._months.tallies)

    def reservation(self, reservation_id: str) -> ReservationGranted | None:
        """An open (unsettled, unexpired) reservation."""
        return self._reservations.get(reservation_id)

    def open_reservations(self) -> list[ReservationGranted]:
        """Every open reservation, by id."""
        return [self._reservations[key] for key in sorted(self._reservations)]

    def users(self) -> set[str]:
        """Every user with spend or reservations in a month that can still change (this month's and last
        month's active users, and those holding reservations)."""
        active = [tally.active() for tally in self._months.tallies.values()]
        if not active:
            return set()
        ids = self._users.ids
        return {ids[i] for i in np.unique(np.concatenate(active)).tolist()}

    def snapshot(self) -> dict[str, object]:
        """The whole state as plain values: two ledgers agree iff their snapshots are equal."""
        ids = self._users.ids
        months: dict[tuple[str, str], tuple[int, int]] = {}
        crossed: set[tuple[str, str, str]] = set()
        for month, tally in self._months.tallies.items():
            for i in tally.active().tolist():
                months[(ids[i], month)] = tally.totals(i)
            for i in np.flatnonzero(tally.flags).tolist():
                flags = tally.flags_of(i)
                crossed.update((ids[i], month, limit) for limit, flag in _FLAGS.items() if flags & flag)
        settings = self._users.configured()
        return {
            "months": months,
            "reservations": dict(self._reservations),
            "settings": {user: (s.cap_nanos, s.plan, s.timezone) for user, s in settings.items()},
            "seen": frozenset(self._seen.entries()),
            "crossed": frozenset(crossed),
            "expired": dict(self._months.expired),
            "horizon": self._months.horizon,
            "next_prune": self._months.next_prune,
            "dead_letters": self.dead_letters,
            "denials": self.denials,
        }

    # -- deciding ---------------------------------------------------------------------------------

    def decide(self, command: Command, now: datetime) -> list[Event]:
        """The events a command causes, decided against the current state, which is left unchanged.

        RecordUsage -> [UsageRecorded (+ LimitCrossed)], [] for a redelivery (same user, id and content),
        [DeadLettered] when it is invalid, cannot be priced (unknown model: never charged $0), reuses a
        counted id with other content (conflicting_duplicate) or is older than the dedupe window (too_old).
        Authorize -> [ReservationGranted] (allow, or degrade to the plan's cheaper model) or
        [ReservationDenied] (+ LimitCrossed), [] for a request id that already holds an open reservation
        (see `reservation(reservation_id_for(...))`) or one decided after its `expires_at`.
        ConfigureUser -> [UserConfigured (+ LimitCrossed)] or [DeadLettered] for a bad cap, plan or zone.
        RenewReservation -> [ReservationRenewed], or [] when it renews nothing.
        """
        if isinstance(command, RecordUsage):  # nearly every command: see apply
            return self._decide_usage(command, now)
        match command:
            case Authorize():
                return self._decide_authorize(command, now)
            case ConfigureUser():
                return self._decide_configure(command, now)
            case RenewReservation():
                return self._decide_renew(command, now)
            case _:
                assert_never(command)

    def _decide_usage(self, command: RecordUsage, now: datetime) -> list[Event]:
        ts, event_id = command.ts, command.event_id
        if ts.tzinfo is None or ts.utcoffset() is None:
            return [dead_letter(command, now, "bad_timestamp", "ts has no time zone", event_id)]
        counts = (
            command.input_tokens,
            command.output_tokens,
            command.cached_input_tokens,
            command.cache_write_tokens,
        )
        if min(counts) < 0 or command.cached_input_tokens + command.cache_write_tokens > command.input_tokens:
            detail = "token counts must be >= 0 and cached + cache-write tokens at most input tokens"
            return [dead_letter(command, now, "bad_tokens", detail, event_id)]
        if command.model not in self.prices:
            detail = f"model {command.model!r} is not in the price catalog; it is never charged $0"
            return [dead_letter(command, now, "unknown_model", detail, event_id)]
        user = command.user_id
        index, settings = self._settings(user)
        zone = self._zone(settings)
        try:
            ts_month = month_in(ts, zone)
        except (OverflowError, ValueError):
            detail = f"ts {ts.isoformat()} has no calendar month in the user's time zone {zone}"
            return [dead_letter(command, now, "bad_timestamp", detail, event_id)]
        if ts > now + MAX_AHEAD:
            detail = f"ts {ts.isoformat()} is more than {MAX_AHEAD} ahead of the enforcer's clock ({now})"
            return [dead_letter(command, now, "future_timestamp", detail, event_id)]
        clock = self._months.clock(now)
        window = window_month_number(ts)
        first_window_month = utc_month_number(clock) - 1
        if window < first_window_month:
            start = month_number_start(first_window_month) - timedelta(days=1)
            detail = (
                f"ts {ts.isoformat()} is before the dedupe window (from {start.isoformat()}): it cannot be "
                "told from a usage already counted, so it is not counted"
            )
            return [dead_letter(command, now, "too_old", detail, event_id)]
        key = usage_key(user, event_id)
        digest = content_digest(
            ts, command.model, *counts, command.feature, command.outcome, command.reservation_id
        )
        held = self._seen.get(key)
        if held is not None:
            if held & DIGEST_MASK == digest:
                return []  # a redelivery
            detail = (
                f"usage {event_id!r} of user {user!r} was counted before with other content; the first "
                "report is the stored usage with that id, this one is kept here and not counted"
            )
            return [dead_letter(command, now, "conflicting_duplicate", detail, event_id)]
        cost = self.prices[command.model].cost_nanos(*counts)
        month, late, overshoot, settles = self._place(command, ts_month, zone, clock)
        usage = usage_event(command, cost, month, late=late, overshoot=overshoot)
        self._decided = (usage, key, digest, window)
        spent, reserved = self._totals(index, month)
        if settles is not None and settles.month == month:
            reserved -= settles.amount_nanos
        crossings = self._crossings(
            user, index, month, spent + cost, reserved, now, self._cap(settings), self._plan(settings)
        )
        return [usage, *crossings]

    def _place(
        self, command: RecordUsage, ts_month: str, zone: str, clock: datetime
    ) -> tuple[str, bool, bool, ReservationGranted | None]:
        """(month, late, overshoot, the reservation it settles) by the month rule (module docstring)."""
        reservation_id = command.reservation_id
        if reservation_id is not None:
            granted = self._reservations.get(reservation_id)
            # Another user's reservation id settles nothing: a client cannot release someone else's hold.
            if granted is not None and granted.user_id == command.user_id:
                return granted.month, False, False, granted
            expired = self._months.remembered(reservation_id, command.user_id, clock)
            if expired is not None:
                return expired.month, False, True, None
        arrived = month_in(clock, zone)
        if ts_month >= arrived or clock < month_end(ts_month, zone) + self._grace:
            return ts_month, False, False, None
        return arrived, True, False, None

    def _decide_authorize(self, command: Authorize, now: datetime) -> list[Event]:
        user = command.user_id
        reservation_id = reservation_id_for(user, command.request_id)
        if reservation_id in self._reservations:
            return []
        if command.expires_at is not None and now > command.expires_at:
            return []  # the caller gave up waiting: nothing is held for an answer nobody reads
        index, settings = self._settings(user)
        month = month_in(now, self._zone(settings))
        spent, reserved = self._totals(index, month)
        cap = self._cap(settings)
        plan = self._plan(settings)
        remaining = max(0, cap - spent - reserved)

        def deny(reason: str, amount: int) -> ReservationDenied:
            return ReservationDenied(
                request_id=command.request_id,
                user_id=user,
                ts=now,
                month=month,
                model=command.model,
                amount_nanos=amount,
                remaining_nanos=remaining,
                reason=reason,
            )

        if command.max_input_tokens < 0 or command.max_output_tokens < 0:
            return [deny("max_input_tokens and max_output_tokens must be >= 0", 0)]
        if command.model not in self.prices:
            detail = f"model {command.model!r} is not in the price catalog"
            return [
                dead_letter(command, now, "unknown_model", detail),
                deny(f"unknown model {command.model!r}", 0),
            ]
        worst = worst_case_nanos(
            self.prices[command.model], command.max_input_tokens, command.max_output_tokens
        )
        decision: Decision = "allow"
        granted_model = command.model
        amount = worst
        if spent + reserved + worst > cap:
            cheaper = plan.degrade_model
            fits = False
            if (
                plan.at_cap == "degrade"
                and cheaper is not None
                and cheaper != command.model
                and cheaper in self.prices
            ):
                amount = worst_case_nanos(
                    self.prices[cheaper], command.max_input_tokens, command.max_output_tokens
                )
                fits = spent + reserved + amount <= cap
            if not fits:
                reason = (
                    f"worst case ${nanos_to_usd(worst):.6f} exceeds the remaining "
                    f"${nanos_to_usd(remaining):.6f} of the ${nanos_to_usd(cap):.2f} cap for {month}"
                )
                crossings = self._crossings(user, index, month, spent, reserved, now, cap, plan)
                return [deny(reason, worst), *crossings]
            assert cheaper is not None
            granted_model, decision = cheaper, "degrade"
        granted = ReservationGranted(
            reservation_id=reservation_id,
            request_id=command.request_id,
            user_id=user,
            ts=now,
            month=month,
            decision=decision,
            model=granted_model,
            requested_model=command.model,
            amount_nanos=amount,
            expires_at=now + timedelta(seconds=self.config.reservation_ttl_s),
        )
        return [granted, *self._crossings(user, index, month, spent, reserved + amount, now, cap, plan)]

    def _decide_renew(self, command: RenewReservation, now: datetime) -> list[Event]:
        """A heartbeat of a running call: its open reservation lives another TTL from now. Renewing one
        that is settled, expired or another user's does nothing (a late heartbeat is normal)."""
        granted = self._reservations.get(command.reservation_id)
        if granted is None or granted.user_id != command.user_id:
            return []
        expires_at = now + timedelta(seconds=self.config.reservation_ttl_s)
        if expires_at <= granted.expires_at:
            return []
        renewed = ReservationRenewed(
            reservation_id=command.reservation_id, user_id=command.user_id, ts=now, expires_at=expires_at
        )
        return [renewed]

    def _decide_configure(self, command: ConfigureUser, now: datetime) -> list[Event]:
        where = command.topic or "admin"
        try:
            cap = None if command.cap_usd is None else usd_to_nanos(command.cap_usd, where, "cap_usd")
            timezone = (
                None if command.timezone is None else check_timezone(command.timezone, where, "timezone")
            )
            plan = None if command.plan is None else self.config.plan(command.plan).name
        except ConfigError as error:
            return [dead_letter(command, now, "bad_config", str(error))]
        if cap is None and timezone is None and plan is None:
            return []
        configured = UserConfigured(
            user_id=command.user_id, ts=now, cap_nanos=cap, plan=plan, timezone=timezone
        )
        # Cap and plan changes move the user's limits: check them against the new settings' current month.
        index, old = self._settings(command.user_id)
        new = Settings(
            old.cap_nanos if cap is None else cap,
            old.plan if plan is None else plan,
            old.timezone if timezone is None else timezone,
        )
        month = month_in(now, self._zone(new))
        spent, reserved = self._totals(index, month)
        crossings = self._crossings(
            command.user_id, index, month, spent, reserved, now, self._cap(new), self._plan(new)
        )
        return [configured, *crossings]

    def _crossings(
        self,
        user: str,
        index: int | None,
        month: str,
        spent: int,
        reserved: int,
        now: datetime,
        cap: int,
        plan: Plan,
    ) -> list[Event]:
        """LimitCrossed for each limit this user-month reaches under this cap and plan and that was not
        yet announced: soft on settled spend, the cap on settled + reserved spend."""
        reached = limits_reached(spent, reserved, cap, plan.soft_threshold_pct)
        if not reached:
            return []
        tally = self._months.get(month)
        announced = 0 if tally is None else tally.flags_of(index)
        return [
            LimitCrossed(
                user_id=user,
                ts=now,
                month=month,
                limit=limit,
                spent_nanos=spent,
                reserved_nanos=reserved,
                cap_nanos=cap,
            )
            for limit in reached
            if not announced & _FLAGS[limit]
        ]

    def expire_due(self, now: datetime) -> list[Event]:
        """ReservationExpired for every open reservation whose expiry is at or before `now`, oldest first.

        Decides only: apply the events to release the amounts.
        """
        due = self._expiry.due(now, self._is_open)
        return [_expired(self._reservations[reservation_id], now) for reservation_id in due]

    def _is_open(self, reservation_id: str, expires_at: datetime) -> bool:
        granted = self._reservations.get(reservation_id)
        return granted is not None and granted.expires_at == expires_at

    # -- evolving ---------------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Fold one event into the state. Replay = apply every stored event in order."""
        decided, self._decided = self._decided, None
        # A usage is nearly every event: it is tested first by isinstance, which costs less than a class
        # pattern (a replay applies millions); the match takes the others, and assert_never makes a type
        # left out a mypy error.
        if isinstance(event, UsageRecorded):
            self._apply_usage(event, decided)
            return
        match event:
            case ReservationGranted():
                self._reservations[event.reservation_id] = event
                self._months.tally(event.month).add_reserved(
                    self._users.add(event.user_id), event.amount_nanos
                )
                self._months.hold(event.month)
                self._expiry.push(event.expires_at, event.reservation_id)
            case ReservationRenewed():
                granted = self._reservations.get(event.reservation_id)
                if granted is not None and granted.user_id == event.user_id:
                    self._reservations[event.reservation_id] = msgspec.structs.replace(
                        granted, expires_at=event.expires_at
                    )
                    self._expiry.push(event.expires_at, event.reservation_id)
            case ReservationExpired():
                granted = self._reservations.get(event.reservation_id)
                if granted is not None:
                    self._months.remember(granted, event.ts)
                    self._release(granted)
            case UserConfigured():
                self._users.configure(event.user_id, event.cap_nanos, event.plan, event.timezone)
            case LimitCrossed():
                self._months.tally(event.month).set_flag(self._users.add(event.user_id), _FLAGS[event.limit])
            case ReservationDenied():
                self.denials += 1
            case DeadLettered():
                self.dead_letters += 1
            case _:
                assert_never(event)
        self._advance(event.ts)

    def _apply_usage(self, event: UsageRecorded, decided: tuple[UsageRecorded, int, int, int] | None) -> None:
        if decided is not None and decided[0] is event:
            _, key, digest, window = decided  # decided just now: not held, nothing changed since
        else:
            key = usage_key(event.user_id, event.event_id)
            if self._seen.get(key) is not None:
                return  # a duplicate that reached the store anyway still counts once
            digest = content_digest(
                event.ts,
                event.model,
                event.input_tokens,
                event.output_tokens,
                event.cached_input_tokens,
                event.cache_write_tokens,
                event.feature,
                event.outcome,
                event.reservation_id,
            )
            window = window_month_number(event.ts)
        if window >= self._seen.first_month:
            self._seen.add(key, digest, window)
        month = event.month or self.month_of(event.user_id, event.ts)
        self._months.tally(month).add_spent(self._users.add(event.user_id), event.cost_nanos)
        if event.reservation_id is not None:
            granted = self._reservations.get(event.reservation_id)
            if granted is not None and granted.user_id == event.user_id:
                self._release(granted)
        with contextlib.suppress(OverflowError):  # a ts early in year 1 says nothing about the clock
            self._advance(event.ts - MAX_AHEAD)

    def apply_all(self, events: Iterable[Event]) -> None:
        """Apply events in order (a replay)."""
        for event in events:
            self.apply(event)

    def execute(self, command: Command, now: datetime) -> list[Event]:
        """Decide, then apply what was decided: the in-memory path for a caller without a store."""
        events = self.decide(command, now)
        for event in events:
            self.apply(event)
        return events

    def _release(self, granted: ReservationGranted) -> None:
        del self._reservations[granted.reservation_id]
        tally = self._months.tally(granted.month)
        tally.add_reserved(self._users.add(granted.user_id), -granted.amount_nanos)
        self._months.unhold(granted.month)

    def _advance(self, clock: datetime) -> None:
        if self._months.advance(clock):
            assert self._months.horizon is not None
            self._seen.forget_before(utc_month_number(self._months.horizon) - 1)

    # -- snapshots --------------------------------------------------------------------------------

    def to_snapshot(self, seq: int) -> LedgerSnapshot:
        """The state after the event with store sequence number `seq`, cheap enough to take between two
        events (mutable arrays are copied, the dedupe index's runs shared); encode it elsewhere."""
        ids, cap, plan, zone = self._users.copies()
        users = len(ids)
        return LedgerSnapshot(
            seq=seq,
            horizon=self._months.horizon,
            next_prune=self._months.next_prune,
            dead_letters=self.dead_letters,
            denials=self.denials,
            first_window_month=self._seen.first_month,
            user_ids=ids,
            cap=cap,
            plan=plan,
            zone=zone,
            plan_names=self._users.plan_names[:],
            zone_names=self._users.zone_names[:],
            months={month: MonthArrays(*t.copies(users)) for month, t in self._months.tallies.items()},
            reservations=list(self._reservations.values()),
            expired=[(rid, r.user_id, r.month, r.forget_after) for rid, r in self._months.expired.items()],
            seen=self._seen.freeze(),
        )

    @classmethod
    def from_snapshot(cls, config: EnforcerConfig, prices: PriceCatalog, snapshot: LedgerSnapshot) -> Ledger:
        """A ledger in the state `snapshot` recorded; apply the events after `snapshot.seq` to catch up.
        Raises SnapshotError when the snapshot's parts do not fit together."""
        ledger = cls(config, prices)
        try:
            ledger._users.restore(
                list(snapshot.user_ids),
                snapshot.cap,
                snapshot.plan,
                snapshot.zone,
                list(snapshot.plan_names),
                list(snapshot.zone_names),
            )
            tallies = {
                month: MonthTally(arrays.spent, arrays.reserved, arrays.flags)
                for month, arrays in snapshot.months.items()
            }
        except ValueError as error:
            raise SnapshotError("users", str(error)) from error
        for granted in snapshot.reservations:
            ledger._reservations[granted.reservation_id] = granted
            ledger._expiry.push(granted.expires_at, granted.reservation_id)
        ledger._months.restore(
            tallies,
            [granted.month for granted in snapshot.reservations],
            [(rid, Remembered(user, month, forget)) for rid, user, month, forget in snapshot.expired],
            snapshot.horizon,
            snapshot.next_prune,
        )
        ledger._seen = SeenIndex.thaw(snapshot.seen, snapshot.first_window_month)
        ledger.dead_letters = snapshot.dead_letters
        ledger.denials = snapshot.denials
        return ledger


def _expired(granted: ReservationGranted, now: datetime) -> ReservationExpired:
    return ReservationExpired(
        reservation_id=granted.reservation_id,
        user_id=granted.user_id,
        ts=now,
        month=granted.month,
        amount_nanos=granted.amount_nanos,
    )
