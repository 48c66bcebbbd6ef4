"""What the ledger holds and how events change it: the fold under budget.domain.ledger's decisions.

`apply(event)` folds one event into the state; a replay applies every stored event in order, and a
snapshot (`to_snapshot` / `from_snapshot`) stands for the events before its seq. The state is compact and
bounded (see budget.domain.ledger's docstring): users by dense index (budget.domain.users), settings and
month totals in numpy arrays (budget.domain.tallies) of the months that can still change
(budget.domain.retention), and the dedupe index of the window (budget.domain.seen).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Self, TypeAlias, assert_never

import msgspec
import numpy as np

from budget.domain.commands import UserStatus, state_of
from budget.domain.config import EnforcerConfig, Plan
from budget.domain.events import (
    DeadLettered,
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
from budget.domain.months import month_in, utc_month_number, window_month_number
from budget.domain.prices import PriceCatalog
from budget.domain.profiles import Profile, RecentUsers
from budget.domain.retention import OpenMonths, Remembered
from budget.domain.seen import SeenIndex, content_digest, usage_key
from budget.domain.snapshot import LedgerSnapshot, MonthArrays
from budget.domain.tallies import CAP_FLAG, SOFT_FLAG, MonthTally, Settings, UserSettings
from budget.domain.users import UserIndex
from budget.errors import SnapshotError

# A usage may be stamped at most this far ahead of the enforcer's clock (the wire allows less): beyond it,
# it would move the ledger's clock, and with it what the ledger forgets, ahead of time.
MAX_AHEAD = timedelta(hours=1)
FLAGS: dict[Limit, int] = {"soft": SOFT_FLAG, "cap": CAP_FLAG}
# A usage as decided, for its apply: the event, its dedupe key, digest and window month, the user's index
# (None: not yet numbered) and its month's totals (None: not yet kept).
Decided: TypeAlias = tuple[UsageRecorded, int, int, int, int | None, MonthTally | None]


class LedgerState:
    """Per-user monthly spend, reservations and settings, folded from events (Ledger adds decisions)."""

    def __init__(self, config: EnforcerConfig, prices: PriceCatalog) -> None:
        self.config = config
        self.prices = prices
        self._grace = timedelta(seconds=config.month_grace_s)
        self._users = UserIndex()
        self._settings_of = UserSettings()
        self._months = OpenMonths(self._grace)
        self._reservations: dict[str, ReservationGranted] = {}
        self._expiry = ExpiryQueue()
        self._seen = SeenIndex()
        self._recent = RecentUsers()
        # A usage moves the clock only if stamped after this (the horizon plus MAX_AHEAD).
        self._usage_moves_clock_after: datetime | None = None
        self._decided: Decided | None = None  # the last usage decided, until the next apply
        self.dead_letters = 0
        self.denials = 0

    # -- reading ----------------------------------------------------------------------------------

    def seen(self, user_id: str, event_id: str) -> bool:
        """Whether this user's usage event with this id was counted (and is still in the dedupe window)."""
        return self._seen.get(usage_key(user_id, event_id)) is not None

    def _settings(self, user_id: str) -> tuple[int | None, Settings]:
        index = self._users.find(user_id)
        return index, self._settings_of.of(index)

    def _profile(self, user_id: str) -> Profile:
        """The user as decisions see them, kept for the users seen lately (budget.domain.profiles)."""
        profile = self._recent.get(user_id)
        if profile is None:
            index, settings = self._settings(user_id)
            plan = self._plan(settings)
            cap = plan.cap_nanos if settings.cap_nanos is None else settings.cap_nanos
            profile = Profile(user_id, index, settings, self._zone(settings), cap, plan)
            if index is not None:  # a new user is numbered when applied: nothing to keep before that
                self._recent.keep(profile)
        return profile

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
        profile = self._profile(user_id)
        zone, cap = profile.zone, profile.cap
        month = month_in(now, zone)
        spent, reserved = self._totals(profile.index, month)
        return UserStatus(
            user_id=user_id,
            month=month,
            spent_nanos=spent,
            reserved_nanos=reserved,
            cap_nanos=cap,
            remaining_nanos=max(0, cap - spent - reserved),
            state=state_of(spent, reserved, cap, profile.plan.soft_threshold_pct),
            plan=profile.settings.plan,
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

    @property
    def open_reservation_count(self) -> int:
        """How many reservations are open (granted, neither settled nor expired)."""
        return len(self._reservations)

    def users(self) -> set[str]:
        """Every user with spend or reservations in a month that can still change (this month's and last
        month's active users, and those holding reservations)."""
        active = [tally.active() for tally in self._months.tallies.values()]
        if not active:
            return set()
        indexes = active[0] if len(active) == 1 else np.unique(np.concatenate(active))
        return set(self._users.ids_of(indexes.tolist()))

    def snapshot(self) -> dict[str, object]:
        """The whole state as plain values: two ledgers agree iff their snapshots are equal."""
        user_of = self._users.id_of
        months: dict[tuple[str, str], tuple[int, int]] = {}
        crossed: set[tuple[str, str, str]] = set()
        for month, tally in self._months.tallies.items():
            for i in tally.active().tolist():
                months[(user_of(i), month)] = tally.totals(i)
            for i in np.flatnonzero(tally.flags).tolist():
                flags = tally.flags_of(i)
                crossed.update((user_of(i), month, limit) for limit, flag in FLAGS.items() if flags & flag)
        settings = {user_of(i): self._settings_of.of(i) for i in self._settings_of.configured()}
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
                index = self._users.add(event.user_id)
                self._settings_of.configure(index, event.cap_nanos, event.plan, event.timezone)
                self._recent.forget(event.user_id)
            case LimitCrossed():
                self._months.tally(event.month).set_flag(self._users.add(event.user_id), FLAGS[event.limit])
            case ReservationDenied():
                self.denials += 1
            case DeadLettered():
                self.dead_letters += 1
            case _:
                assert_never(event)
        self._advance(event.ts)

    def _apply_usage(self, event: UsageRecorded, decided: Decided | None) -> None:
        ts = event.ts
        if decided is not None and decided[0] is event:
            # Decided just now: not held, and nothing has changed since (any apply clears `_decided`).
            _, key, digest, window, index, tally = decided
            if window >= self._seen.first_month:
                self._seen.add(key, digest, window)
            if index is None:
                index = self._users.add(event.user_id)
            if tally is None:
                tally = self._months.tally(event.month or self.month_of(event.user_id, ts))
        else:
            digest = content_digest(
                ts,
                event.model,
                event.input_tokens,
                event.output_tokens,
                event.cached_input_tokens,
                event.cache_write_tokens,
                event.feature,
                event.outcome,
                event.reservation_id,
            )
            key = usage_key(event.user_id, event.event_id)
            if not self._seen.insert(key, digest, window_month_number(ts)):
                return  # a duplicate that reached the store anyway still counts once
            index = self._users.add(event.user_id)
            tally = self._months.tally(event.month or self.month_of(event.user_id, ts))
        tally.add_spent(index, event.cost_nanos)
        if event.reservation_id is not None:
            granted = self._reservations.get(event.reservation_id)
            if granted is not None and granted.user_id == event.user_id:
                self._release(granted)
        later = self._usage_moves_clock_after
        # (A ts early in year 1 says nothing about the clock, and has no hour before it.)
        if (later is None or ts > later) and ts.year > 1:
            self._advance(ts - MAX_AHEAD)

    def apply_all(self, events: Iterable[Event]) -> None:
        """Apply events in order (a replay)."""
        for event in events:
            self.apply(event)

    def _release(self, granted: ReservationGranted) -> None:
        del self._reservations[granted.reservation_id]
        tally = self._months.tally(granted.month)
        tally.add_reserved(self._users.add(granted.user_id), -granted.amount_nanos)
        self._months.unhold(granted.month)

    def _advance(self, clock: datetime) -> None:
        months = len(self._months.tallies)
        if self._months.advance(clock):
            assert self._months.horizon is not None
            self._seen.forget_before(utc_month_number(self._months.horizon) - 1)
            if len(self._months.tallies) < months:
                self._forget_idle_users()
        self._usage_moves_clock_after = self._months.horizon + MAX_AHEAD if self._months.horizon else None

    def _forget_idle_users(self) -> None:
        """Renumber users without those who hold nothing any more (no settings, nothing in a month that
        can still change), once they are a quarter of the index: the index would otherwise grow with
        every user ever seen. Decided by the state alone, so a replay renumbers alike."""
        users = len(self._users)
        keep = np.zeros(users, dtype=bool)
        for tally in self._months.tallies.values():
            keep |= tally.touched(users)
        keep[self._settings_of.configured()] = True
        idle = users - int(np.count_nonzero(keep))
        if idle == 0 or 4 * idle < users:
            return
        self._users = self._users.subset(keep)
        self._recent.clear()  # their indexes changed
        self._settings_of.kept(keep)
        for tally in self._months.tallies.values():
            tally.kept(keep)

    # -- snapshots --------------------------------------------------------------------------------

    def to_snapshot(self, seq: int) -> LedgerSnapshot:
        """The state after the event with store sequence number `seq`, cheap enough to take between two
        events (mutable arrays are copied, the dedupe index's runs shared); encode it elsewhere."""
        ids, ends = self._users.frozen()
        users = len(ends)
        cap, plan, zone = self._settings_of.copies(users)
        return LedgerSnapshot(
            seq=seq,
            horizon=self._months.horizon,
            next_prune=self._months.next_prune,
            dead_letters=self.dead_letters,
            denials=self.denials,
            first_window_month=self._seen.first_month,
            user_ids=ids,
            user_ends=ends,
            cap=cap,
            plan=plan,
            zone=zone,
            plan_names=self._settings_of.plan_names[:],
            zone_names=self._settings_of.zone_names[:],
            months={month: MonthArrays(*t.copies(users)) for month, t in self._months.tallies.items()},
            reservations=list(self._reservations.values()),
            expired=[(rid, r.user_id, r.month, r.forget_after) for rid, r in self._months.expired.items()],
            seen=self._seen.freeze(),
        )

    @classmethod
    def from_snapshot(cls, config: EnforcerConfig, prices: PriceCatalog, snapshot: LedgerSnapshot) -> Self:
        """A ledger in the state `snapshot` recorded; apply the events after `snapshot.seq` to catch up.
        Raises SnapshotError when the snapshot's parts do not fit together."""
        ledger = cls(config, prices)
        try:
            ledger._users = UserIndex.thaw(snapshot.user_ids, snapshot.user_ends)
            ledger._settings_of.restore(
                len(snapshot.user_ends),
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
        if snapshot.horizon is not None:
            ledger._usage_moves_clock_after = snapshot.horizon + MAX_AHEAD
        ledger.dead_letters = snapshot.dead_letters
        ledger.denials = snapshot.denials
        return ledger
