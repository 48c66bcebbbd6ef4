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

from datetime import datetime, timedelta
from typing import assert_never

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
    usage_event,
    worst_case_nanos,
)
from budget.domain.config import Plan, check_timezone, usd_to_nanos
from budget.domain.events import (
    Decision,
    Event,
    LimitCrossed,
    ReservationDenied,
    ReservationExpired,
    ReservationGranted,
    ReservationRenewed,
    UserConfigured,
)
from budget.domain.months import (
    month_end,
    month_in,
    month_number_start,
    utc_month_number,
    window_month_number,
)
from budget.domain.prices import nanos_to_usd, nanos_to_usd_text
from budget.domain.seen import DIGEST_MASK, content_digest, usage_key_of
from budget.domain.snapshot import LedgerSnapshot
from budget.domain.state import FLAGS, MAX_AHEAD, LedgerState
from budget.domain.tallies import Settings
from budget.errors import ConfigError

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


class Ledger(LedgerState):
    """Per-user monthly spend, reservations and settings, folded from events; decides commands."""

    # (now, horizon, what `_moment` worked out from them)
    _moment_memo: tuple[datetime, datetime | None, tuple[datetime, datetime, int]] | None = None

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
        # Nearly every command: written for speed (locals, the common cases inline; each call or
        # attribute read costs tens of nanoseconds, and an event took a few microseconds in all).
        ts, event_id = command.ts, command.event_id
        if ts.utcoffset() is None:  # naive
            return [dead_letter(command, now, "bad_timestamp", "ts has no time zone", event_id)]
        input_tokens, output_tokens = command.input_tokens, command.output_tokens
        cached, cache_write = command.cached_input_tokens, command.cache_write_tokens
        if (
            input_tokens < 0
            or output_tokens < 0
            or cached < 0
            or cache_write < 0
            or cached + cache_write > input_tokens
        ):
            detail = "token counts must be >= 0 and cached + cache-write tokens at most input tokens"
            return [dead_letter(command, now, "bad_tokens", detail, event_id)]
        prices, model = self.prices, command.model
        price = prices.prices.get(model)  # the common case: a listed name whose price never changed
        if price is None or model in prices.history:
            if model not in prices:  # neither listed nor another name of a listed model
                detail = f"model {model!r} is not in the price catalog; it is never charged $0"
                return [dead_letter(command, now, "unknown_model", detail, event_id)]
            price = prices.price_at(model, ts)  # a price change never reprices the calls before it
        user = command.user_id
        profile = self._recent.get(user) or self._profile(user)
        zone = profile.zone
        try:
            ts_month = month_in(ts, zone)
        except (OverflowError, ValueError):
            detail = f"ts {ts.isoformat()} has no calendar month in the user's time zone {zone}"
            return [dead_letter(command, now, "bad_timestamp", detail, event_id)]
        latest, clock, first_window_month = self._moment(now)
        if ts > latest:
            detail = f"ts {ts.isoformat()} is more than {MAX_AHEAD} ahead of the enforcer's clock ({now})"
            return [dead_letter(command, now, "future_timestamp", detail, event_id)]
        window = window_month_number(ts)
        if window < first_window_month:
            start = month_number_start(first_window_month) - timedelta(days=1)
            detail = (
                f"ts {ts.isoformat()} is before the dedupe window (from {start.isoformat()}): it cannot be "
                "told from a usage already counted, so it is not counted"
            )
            return [dead_letter(command, now, "too_old", detail, event_id)]
        key = usage_key_of(profile.keys, event_id)
        digest = content_digest(
            ts,
            command.model,
            input_tokens,
            output_tokens,
            cached,
            cache_write,
            command.feature,
            command.outcome,
            command.reservation_id,
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
        cost = price.cost_nanos(input_tokens, output_tokens, cached, cache_write)
        if command.reservation_id is None and ts_month >= month_in(clock, zone):
            month, late, overshoot, settles = ts_month, False, False, None  # the common case of _place
        else:
            month, late, overshoot, settles = self._place(command, ts_month, zone, clock)
        usage = usage_event(command, cost, month, late=late, overshoot=overshoot)
        index = profile.index
        tally = self._months.tallies.get(month)
        self._decided = (usage, key, digest, window, index, tally)
        spent, reserved = (0, 0) if tally is None else tally.totals(index)
        spent += cost
        if settles is not None and settles.month == month:
            reserved -= settles.amount_nanos
        cap, plan = profile.cap, profile.plan
        if not limits_reached(spent, reserved, cap, plan.soft_threshold_pct):
            return [usage]
        return [usage, *self._crossings(user, index, month, spent, reserved, now, cap, plan)]

    def _moment(self, now: datetime) -> tuple[datetime, datetime, int]:
        """(the latest ts a usage may carry, the clock decisions go by, the dedupe window's first month) at
        `now`: worked out once for all the usage of one message (they share `now`), again when the
        horizon moves."""
        horizon = self._months.horizon
        memo = self._moment_memo
        if memo is not None and memo[0] is now and memo[1] is horizon:
            return memo[2]
        clock = self._months.clock(now)
        moment = (now + MAX_AHEAD, clock, utc_month_number(clock) - 1)
        self._moment_memo = (now, horizon, moment)
        return moment

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
        profile = self._profile(user)
        index, cap, plan = profile.index, profile.cap, profile.plan
        month = month_in(now, profile.zone)
        spent, reserved = self._totals(index, month)
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
            self.prices.price_at(command.model, now), command.max_input_tokens, command.max_output_tokens
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
                    self.prices.price_at(cheaper, now), command.max_input_tokens, command.max_output_tokens
                )
                fits = spent + reserved + amount <= cap
            if not fits:
                reason = (
                    f"worst case ${nanos_to_usd(worst):.6f} exceeds the remaining "
                    f"${nanos_to_usd(remaining):.6f} of the ${nanos_to_usd_text(cap)} cap for {month}"
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
            if not announced & FLAGS[limit]
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

    def execute(self, command: Command, now: datetime) -> list[Event]:
        """Decide, then apply what was decided: the in-memory path for a caller without a store."""
        events = self.decide(command, now)
        for event in events:
            self.apply(event)
        return events


def _expired(granted: ReservationGranted, now: datetime) -> ReservationExpired:
    return ReservationExpired(
        reservation_id=granted.reservation_id,
        user_id=granted.user_id,
        ts=now,
        month=granted.month,
        amount_nanos=granted.amount_nanos,
    )
