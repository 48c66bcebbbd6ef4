"""What the ledger keeps of its months, and when it forgets them: only what can still change.

A month takes usage by its timestamp until it is settled (`months.settled_after`: its end in every time
zone plus the grace period); after that only the settlement of a reservation made in it, or the late usage
of one that expired (remembered until the month is settled, and at least the grace period after the
expiry), can change it. A month's totals are dropped once it is settled and nothing holds it.

When that happens is decided by the ledger's own clock, the horizon: the latest time its events show,
advanced by `advance` as they are applied. A live, a replayed and a restored ledger see the same events,
so they forget alike.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from budget.domain.events import ReservationGranted
from budget.domain.months import month_number_start, settled_after, utc_month_number
from budget.domain.tallies import MonthTally


@dataclass(frozen=True, slots=True)
class Remembered:
    """An expired reservation: its late usage still counts in its month, as an overshoot."""

    user_id: str
    month: str
    forget_after: datetime


class OpenMonths:
    """Month totals of the months that can still change, what holds them open, and the horizon."""

    def __init__(self, grace: timedelta) -> None:
        self.grace = grace
        self.tallies: dict[str, MonthTally] = {}
        self.expired: dict[str, Remembered] = {}
        self.horizon: datetime | None = None
        self.next_prune: datetime | None = None  # None: work it out at the next advance
        self._holds: Counter[str] = Counter()  # open and remembered reservations per month
        self._forget_queue: list[tuple[datetime, str]] = []

    def clock(self, now: datetime) -> datetime:
        """The time decisions go by: `now`, or the horizon if the events went further."""
        horizon = self.horizon
        return now if horizon is None or now >= horizon else horizon

    def get(self, month: str) -> MonthTally | None:
        """The month's totals, or None when the ledger holds none."""
        return self.tallies.get(month)

    def tally(self, month: str) -> MonthTally:
        """The month's totals, made empty if the ledger held none."""
        tally = self.tallies.get(month)
        if tally is None:
            tally = self.tallies[month] = MonthTally()
            self._schedule(settled_after(month, self.grace))
        return tally

    def hold(self, month: str) -> None:
        """A reservation made in `month` is open: keep the month."""
        self._holds[month] += 1

    def unhold(self, month: str) -> None:
        """A reservation made in `month` is settled or forgotten; drop the month if nothing else needs it."""
        self._holds[month] -= 1
        if self._holds[month] <= 0:
            del self._holds[month]
            if self.horizon is not None and self.horizon >= settled_after(month, self.grace):
                self.tallies.pop(month, None)

    def remember(self, granted: ReservationGranted, expired_at: datetime) -> None:
        """Remember an expired reservation (it holds its month while remembered)."""
        forget_after = max(settled_after(granted.month, self.grace), expired_at + self.grace)
        self._remember(granted.reservation_id, Remembered(granted.user_id, granted.month, forget_after))

    def _remember(self, reservation_id: str, remembered: Remembered) -> None:
        self.expired[reservation_id] = remembered
        heapq.heappush(self._forget_queue, (remembered.forget_after, reservation_id))
        self.hold(remembered.month)
        self._schedule(remembered.forget_after)

    def remembered(self, reservation_id: str, user_id: str, clock: datetime) -> Remembered | None:
        """The user's expired reservation with this id, if it is still remembered at `clock`."""
        found = self.expired.get(reservation_id)
        if found is None or found.user_id != user_id or clock >= found.forget_after:
            return None
        return found

    def advance(self, clock: datetime) -> bool:
        """Move the horizon to `clock` if it is later; True when that forgot what can no longer change
        (the caller then forgets its own: the dedupe window moves with `horizon`)."""
        horizon = self.horizon
        if horizon is not None and clock <= horizon:
            return False
        self.horizon = clock
        if self.next_prune is not None and clock < self.next_prune:
            return False
        self._prune(clock)
        return True

    def _schedule(self, when: datetime) -> None:
        if self.next_prune is not None and (self.horizon is None or when > self.horizon):
            self.next_prune = min(self.next_prune, when)

    def _prune(self, horizon: datetime) -> None:
        queue = self._forget_queue
        while queue and queue[0][0] <= horizon:
            forget_after, reservation_id = heapq.heappop(queue)
            remembered = self.expired.get(reservation_id)
            if remembered is not None and remembered.forget_after == forget_after:
                del self.expired[reservation_id]
                self.unhold(remembered.month)
        # The dedupe window moves at the start of each UTC month.
        upcoming = [month_number_start(utc_month_number(horizon) + 1)]
        for month in list(self.tallies):
            closes = settled_after(month, self.grace)
            if closes > horizon:
                upcoming.append(closes)
            elif month not in self._holds:
                del self.tallies[month]
        if queue:
            upcoming.append(queue[0][0])
        self.next_prune = min(upcoming)

    def restore(
        self,
        tallies: dict[str, MonthTally],
        open_months: list[str],
        expired: list[tuple[str, Remembered]],
        horizon: datetime | None,
        next_prune: datetime | None,
    ) -> None:
        """Take the state a snapshot recorded (`open_months`: the month of each open reservation)."""
        self.tallies = tallies
        for month in open_months:
            self.hold(month)
        for reservation_id, remembered in expired:
            self._remember(reservation_id, remembered)
        self.horizon, self.next_prune = horizon, next_prune
