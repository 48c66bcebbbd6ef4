"""Simulated periods: the months a run covers, the unit of every per-user-month figure and of the cap.

A run of D days (1..366) starts at its scenario's `traffic.start` and is cut into months counted from that
date -- calendar months when it is the first of a month, as in every shipped scenario. Each month is one
period, as long as that month (28 to 31 days); the last one is partial when the run ends inside it. A
user's spend resets at each period's start, as the enforcer's does at each calendar month's.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

import numpy as np

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
