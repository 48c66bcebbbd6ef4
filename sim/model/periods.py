"""Simulated periods: the months a run covers, the unit of every per-user-month figure and of the cap.

A run of D days (1..366) starts at its scenario's `traffic.start` and is cut into months counted from that
date -- calendar months when it is the first of a month, as in every shipped scenario. Each month is one
period, as long as that month (28 to 31 days); the last one is partial when the run ends inside it. A
user's spend resets at each period's start, as the enforcer's does at each calendar month's.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from budget.domain.prices import NANOS_PER_USD

MIN_DAYS, MAX_DAYS = 1, 366
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Period:
    """One month of a run: where it starts (in days since the run's start and as a date), how many of its
    days the run covers, and how long the month is."""

    index: int
    start: dt.date
    first_day: int  # days since the run's start
    days: int  # days the run covers
    month_days: int  # the month's length

    @property
    def complete(self) -> bool:
        return self.days == self.month_days

    @property
    def start_s(self) -> float:
        return self.first_day * SECONDS_PER_DAY

    @property
    def extrapolation(self) -> float:
        """The factor that takes a total over the covered days to the whole month (1 when complete)."""
        return self.month_days / self.days

    def label(self) -> str:
        """ "2026-11" for a month starting on the 1st, else its first date; "partial: 7 of 30 days" after it
        when the run covers only part of it."""
        name = self.start.strftime("%Y-%m") if self.start.day == 1 else self.start.isoformat()
        return name if self.complete else f"{name} (partial: {self.days} of {self.month_days} days)"

    def to_json(self) -> dict[str, object]:
        return {
            "start": self.start.isoformat(),
            "days": self.days,
            "month_days": self.month_days,
            "complete": self.complete,
        }


@dataclass(frozen=True, slots=True)
class MonthBasis:
    """How a run's per-period figures become its monthly ones: per-user-month figures are the mean over
    the complete months (or the one partial month's as it is), monthly totals the mean over the complete
    months (or the partial month's total extrapolated to its whole length)."""

    periods: tuple[Period, ...]

    @property
    def complete(self) -> list[Period]:
        return [p for p in self.periods if p.complete]

    @property
    def basis(self) -> list[Period]:
        """The periods the headline per-user-month figures come from: the complete months, or else the
        one partial month the run covers."""
        return self.complete or [self.periods[0]]

    def per_user_month_label(self) -> str:
        complete = len(self.complete)
        if complete == 0:
            only = self.periods[0]
            return f"partial: {only.days} of {only.month_days} days"
        return "1 complete month" if complete == 1 else f"mean of {complete} complete months"

    def headline(self, per_period: Sequence[float]) -> float:
        """A per-user-month figure: its mean over the basis periods (the partial month's as it is)."""
        basis = self.basis
        return math.fsum(per_period[p.index] for p in basis) / len(basis)

    def monthly_total(self, nanos_per_period: Sequence[int] | np.ndarray) -> float:
        """A monthly total in USD: the mean over the complete months, or the partial month's total
        extrapolated to its whole length."""
        complete = self.complete
        if complete:
            return sum(nanos_per_period[p.index] for p in complete) / len(complete) / NANOS_PER_USD
        only = self.periods[0]
        return nanos_per_period[0] * only.extrapolation / NANOS_PER_USD

    def extrapolation(self) -> dict[str, object] | None:
        """The factor and its basis when monthly totals are extrapolated (no complete month), else None."""
        if self.complete:
            return None
        only = self.periods[0]
        return {
            "factor": only.extrapolation,
            "basis": f"{only.days} of {only.month_days} days of the month from {only.start.isoformat()}",
        }


def add_months(start: dt.date, months: int) -> dt.date:
    """`start` moved `months` calendar months on, its day kept or clamped to the month's last day."""
    year, month = divmod(start.month - 1 + months, 12)
    year += start.year
    last = calendar.monthrange(year, month + 1)[1]
    return dt.date(year, month + 1, min(start.day, last))


def periods_of(start: dt.date, days: int) -> tuple[Period, ...]:
    """The months a run of `days` days from `start` covers, in order."""
    found: list[Period] = []
    first_day = 0
    while first_day < days:
        begin = add_months(start, len(found))
        month_days = (add_months(start, len(found) + 1) - begin).days
        covered = min(month_days, days - first_day)
        found.append(Period(len(found), begin, first_day, covered, month_days))
        first_day += covered
    return tuple(found)


def run_periods(start: str, days: int) -> tuple[Period, ...]:
    """The periods of a run from a scenario's `traffic.start` (an ISO date, checked when it was loaded)."""
    return periods_of(dt.date.fromisoformat(start), days)


def period_index(periods: tuple[Period, ...], t: np.ndarray) -> np.ndarray:
    """Each time's period (seconds since the run's start). A request after the run's last day -- the end
    of a session that started inside it -- belongs to the last period."""
    starts = np.array([p.start_s for p in periods], dtype=np.float64)
    index: np.ndarray = np.searchsorted(starts, t, side="right") - 1
    np.clip(index, 0, len(periods) - 1, out=index)
    return index.astype(np.int64)
