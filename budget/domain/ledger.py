"""The pure ledger: per-user monthly spend folded from events, and decisions made against it.

`decide(command, now)` answers a command with the events it causes and changes nothing; `apply(event)`
folds one event into the state. The enforcer runs decide then apply, command after command, so every
decision sees every earlier reservation; a restart applies every stored event in order (replay is a fold).
No clock is read here: `now` is passed in, and everything derived from it (a reservation's expiry, the
month a usage counts in) is written into the events, so a replay never depends on when it runs.

Money is integer nano-dollars. Spend is keyed by (user, "YYYY-MM"), the calendar month in the user's time
zone: a new month is a new key, so nothing ever resets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import assert_never

import msgspec

from budget.domain.commands import (
    Authorize,
    Command,
    ConfigureUser,
    RecordUsage,
    RenewReservation,
    UserStatus,
    dead_letter,
    limits_reached,
    month_in,
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
    LimitCrossed,
    ReservationDenied,
    ReservationExpired,
    ReservationGranted,
    ReservationRenewed,
    UsageRecorded,
    UserConfigured,
)
from budget.domain.expiry import ExpiryQueue
from budget.domain.prices import PriceCatalog, nanos_to_usd
from budget.errors import ConfigError

__all__ = [
    "Authorize",
    "Command",
    "ConfigureUser",
    "Ledger",
    "RecordUsage",
    "RenewReservation",
    "UserStatus",
    "month_in",
    "reservation_id_for",
    "worst_case_nanos",
]


@dataclass(frozen=True, slots=True)
class _Settings:
    """What an admin set for a user (None: not set, the config decides)."""

    cap_nanos: int | None = None
    plan: str | None = None
    timezone: str | None = None

    def merged(self, cap_nanos: int | None, plan: str | None, timezone: str | None) -> _Settings:
        """These settings with each value that is given (not None) replacing its own."""
        return _Settings(
            self.cap_nanos if cap_nanos is None else cap_nanos,
            self.plan if plan is None else plan,
            self.timezone if timezone is None else timezone,
        )

    def resolved_plan(self, config: EnforcerConfig) -> Plan:
        """The plan in effect; a plan no longer in the config falls back to the default one."""
        if not self.plan:
            return config.default_plan
        return config.plans.get(self.plan, config.default_plan)

    def resolved_timezone(self, config: EnforcerConfig) -> str:
        """The IANA time zone in effect (the config's default unless one was set)."""
        return self.timezone or config.default_timezone

    def resolved_cap_nanos(self, config: EnforcerConfig) -> int:
        """The user's own cap if one was set, else their plan's."""
        return self.resolved_plan(config).cap_nanos if self.cap_nanos is None else self.cap_nanos


_UNSET = _Settings()  # a user no admin configured


@dataclass(slots=True)
class _Month:
    spent: int = 0
    reserved: int = 0


class Ledger:
    """Per-user monthly spend, reservations and settings, folded from events; decides commands."""

    def __init__(self, config: EnforcerConfig, prices: PriceCatalog) -> None:
        self.config = config
        self.prices = prices
        self._settings: dict[str, _Settings] = {}
        self._months: dict[tuple[str, str], _Month] = {}
        self._reservations: dict[str, ReservationGranted] = {}
        self._expiry = ExpiryQueue()
        self._seen: set[str] = set()
        self._crossed: set[tuple[str, str, str]] = set()
        self.dead_letters = 0
        self.denials = 0

    # -- reading ----------------------------------------------------------------------------------

    def seen(self, event_id: str) -> bool:
        """Whether a usage event with this id was already applied (the idempotency key)."""
        return event_id in self._seen

    def timezone(self, user_id: str) -> str:
        """The user's IANA time zone (the config's default unless an admin set one)."""
        return self._settings.get(user_id, _UNSET).resolved_timezone(self.config)

    def plan(self, user_id: str) -> Plan:
        """The user's plan; a plan no longer in the config falls back to the default one."""
        return self._settings.get(user_id, _UNSET).resolved_plan(self.config)

    def cap_nanos(self, user_id: str) -> int:
        """The user's own cap if an admin set one, else their plan's."""
        return self._settings.get(user_id, _UNSET).resolved_cap_nanos(self.config)

    def month_of(self, user_id: str, ts: datetime) -> str:
        """The month a timestamp falls in for this user."""
        return month_in(ts, self.timezone(user_id))

    def status(self, user_id: str, now: datetime) -> UserStatus:
        """The user's current month: spent, reserved, cap, remaining and state."""
        month = self.month_of(user_id, now)
        totals = self._months.get((user_id, month), _Month())
        cap = self.cap_nanos(user_id)
        settings = self._settings.get(user_id)
        return UserStatus(
            user_id=user_id,
            month=month,
            spent_nanos=totals.spent,
            reserved_nanos=totals.reserved,
            cap_nanos=cap,
            remaining_nanos=max(0, cap - totals.spent - totals.reserved),
            state=state_of(totals.spent + totals.reserved, cap, self.plan(user_id).soft_threshold_pct),
            plan=settings.plan if settings else None,
            timezone=self.timezone(user_id),
        )

    def spent(self, user_id: str, month: str) -> tuple[int, int]:
        """(spent, reserved) nano-dollars of one user-month."""
        totals = self._months.get((user_id, month), _Month())
        return totals.spent, totals.reserved

    def reservation(self, reservation_id: str) -> ReservationGranted | None:
        """An open (unsettled, unexpired) reservation."""
        return self._reservations.get(reservation_id)

    def open_reservations(self) -> list[ReservationGranted]:
        """Every open reservation, by id."""
        return [self._reservations[key] for key in sorted(self._reservations)]

    def users(self) -> set[str]:
        """Every user with a month that holds spend or reservations (the users `snapshot` lists)."""
        return {user for (user, _month), m in self._months.items() if m.spent or m.reserved}

    def snapshot(self) -> dict[str, object]:
        """The whole state as plain values: two ledgers agree iff their snapshots are equal."""
        return {
            "months": {
                key: (m.spent, m.reserved) for key, m in self._months.items() if m.spent or m.reserved
            },
            "reservations": dict(self._reservations),
            "settings": {k: (s.cap_nanos, s.plan, s.timezone) for k, s in self._settings.items()},
            "seen": frozenset(self._seen),
            "crossed": frozenset(self._crossed),
        }

    # -- deciding ---------------------------------------------------------------------------------

    def decide(self, command: Command, now: datetime) -> list[Event]:
        """The events a command causes, decided against the current state, which is left unchanged.

        RecordUsage -> [UsageRecorded (+ LimitCrossed)], [] for a duplicate event id, [DeadLettered] when
        it cannot be priced (unknown model: never charged $0) or is invalid. Authorize -> [ReservationGranted]
        (allow, or degrade to the plan's cheaper model) or [ReservationDenied] (+ LimitCrossed), [] for a
        request id that already holds an open reservation (see `reservation(reservation_id_for(...))`).
        ConfigureUser -> [UserConfigured (+ LimitCrossed)] or [DeadLettered] for a bad cap, plan or zone.
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
        if command.event_id in self._seen:
            return []
        if command.ts.tzinfo is None:
            return [dead_letter(command, now, "bad_timestamp", "ts has no time zone", command.event_id)]
        counts = (
            command.input_tokens,
            command.output_tokens,
            command.cached_input_tokens,
            command.cache_write_tokens,
        )
        if min(counts) < 0 or command.cached_input_tokens + command.cache_write_tokens > command.input_tokens:
            detail = "token counts must be >= 0 and cached + cache-write tokens at most input tokens"
            return [dead_letter(command, now, "bad_tokens", detail, command.event_id)]
        if command.model not in self.prices:
            detail = f"model {command.model!r} is not in the price catalog; it is never charged $0"
            return [dead_letter(command, now, "unknown_model", detail, command.event_id)]
        cost = self.prices[command.model].cost_nanos(
            command.input_tokens,
            command.output_tokens,
            command.cached_input_tokens,
            command.cache_write_tokens,
        )
        month = self.month_of(command.user_id, command.ts)
        usage = usage_event(command, cost, month)
        released = self._settles(usage)
        spent, reserved = self.spent(command.user_id, month)
        if released is not None and released.month == month:
            reserved -= released.amount_nanos
        user = command.user_id
        return [
            usage,
            *self._crossings(user, month, spent + cost, reserved, now, self.cap_nanos(user), self.plan(user)),
        ]

    def _settles(self, usage: UsageRecorded) -> ReservationGranted | None:
        if usage.reservation_id is None:
            return None
        granted = self._reservations.get(usage.reservation_id)
        # Another user's reservation id settles nothing: a client cannot release someone else's hold.
        return granted if granted is not None and granted.user_id == usage.user_id else None

    def _decide_authorize(self, command: Authorize, now: datetime) -> list[Event]:
        user = command.user_id
        reservation_id = reservation_id_for(user, command.request_id)
        if reservation_id in self._reservations:
            return []
        if command.expires_at is not None and now > command.expires_at:
            return []  # the caller gave up waiting: nothing is held for an answer nobody reads
        month = self.month_of(user, now)
        spent, reserved = self.spent(user, month)
        cap = self.cap_nanos(user)
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
            plan = self.plan(user)
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
                return [deny(reason, worst), *self._crossings(user, month, spent, reserved, now, cap, plan)]
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
        return [granted, *self._crossings(user, month, spent, reserved + amount, now, cap, self.plan(user))]

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
        settings = self._settings.get(command.user_id, _UNSET).merged(cap, plan, timezone)
        month = month_in(now, settings.resolved_timezone(self.config))
        spent, reserved = self.spent(command.user_id, month)
        crossings = self._crossings(
            command.user_id,
            month,
            spent,
            reserved,
            now,
            settings.resolved_cap_nanos(self.config),
            settings.resolved_plan(self.config),
        )
        return [configured, *crossings]

    def _crossings(
        self,
        user: str,
        month: str,
        spent: int,
        reserved: int,
        now: datetime,
        cap: int,
        plan: Plan,
    ) -> list[Event]:
        """LimitCrossed for each limit that (spent + reserved) reaches in this month under this cap and
        plan and that was not yet announced; nothing is announced while nothing is committed (a $0 cap
        is not "crossed")."""
        reached = limits_reached(spent + reserved, cap, plan.soft_threshold_pct)
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
            if (user, month, limit) not in self._crossed
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
        # A usage is nearly every event: it is tested first by isinstance, which costs less than a class
        # pattern (a replay applies millions); the match takes the others, and assert_never makes a type
        # left out a mypy error.
        if isinstance(event, UsageRecorded):
            if event.event_id in self._seen:
                return  # a duplicate that reached the store anyway still counts once
            self._seen.add(event.event_id)
            month = event.month or self.month_of(event.user_id, event.ts)
            self._totals(event.user_id, month).spent += event.cost_nanos
            released = self._settles(event)
            if released is not None:
                self._release(released)
            return
        match event:
            case ReservationGranted():
                self._reservations[event.reservation_id] = event
                self._totals(event.user_id, event.month).reserved += event.amount_nanos
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
                    self._release(granted)
            case UserConfigured():
                settings = self._settings.get(event.user_id, _UNSET)
                self._settings[event.user_id] = settings.merged(event.cap_nanos, event.plan, event.timezone)
            case LimitCrossed():
                self._crossed.add((event.user_id, event.month, event.limit))
            case ReservationDenied():
                self.denials += 1
            case DeadLettered():
                self.dead_letters += 1
            case _:
                assert_never(event)

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
        totals = self._totals(granted.user_id, granted.month)
        totals.reserved -= granted.amount_nanos

    def _totals(self, user_id: str, month: str) -> _Month:
        key = (user_id, month)
        totals = self._months.get(key)
        if totals is None:
            totals = self._months[key] = _Month()
        return totals


def _expired(granted: ReservationGranted, now: datetime) -> ReservationExpired:
    return ReservationExpired(
        reservation_id=granted.reservation_id,
        user_id=granted.user_id,
        ts=now,
        month=granted.month,
        amount_nanos=granted.amount_nanos,
    )
