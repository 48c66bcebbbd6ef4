"""Calendar months: which month an instant falls in, when a month ends, and which months can still change.

A user's month is a calendar month in their time zone ("YYYY-MM"). Two coarser clocks bound what the
ledger keeps: the dedupe window counts UTC months (a month number, months since 2000-01), and a month's
totals are dropped one day after its UTC end plus the grace period, later than its end in any time zone
(local offsets lie within -12 h and +14 h of UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

# The widest gap between a month's end in UTC and in any time zone, with room to spare.
ZONE_MARGIN = timedelta(days=1)
_FIRST_YEAR = 2000  # month number 0 is 2000-01; earlier months are clamped to it
MAX_MONTH_NUMBER = 0xFFFF  # the dedupe index stores month numbers as uint16


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The ZoneInfo of an IANA name (cached: zoneinfo's own cache is slower to ask)."""
    return ZoneInfo(name)


# The last month looked up per time zone, as the instants [from, to) a day inside its bounds: nearly every
# lookup falls inside it and costs two comparisons instead of a time zone conversion. A day of margin
# keeps the slow, exact path for instants near a month's edges (a DST change at midnight moves them).
_recent_months: dict[str, tuple[datetime, datetime, str]] = {}
# The same for the two UTC month numbers (UTC has no DST: exact bounds), as aware datetimes: comparing
# two is cheaper than asking for POSIX seconds.
_NEVER = datetime(1, 1, 1, tzinfo=UTC)
_recent_utc = (_NEVER, _NEVER, 0)
_recent_window = (_NEVER, _NEVER, 0)


def month_in(ts: datetime, timezone: str) -> str:
    """The calendar month ("YYYY-MM") of an aware timestamp in an IANA time zone.

    Raises OverflowError (or ValueError) when the month is outside what datetime can represent there
    (the first or last hours of years 1 and 9999)."""
    recent = _recent_months.get(timezone)
    if recent is not None and recent[0] <= ts < recent[1]:
        return recent[2]
    local = ts.astimezone(zone(timezone))
    month = f"{local.year:04d}-{local.month:02d}"
    if 1 < local.year < 9999 and (recent is None or recent[2] != month):
        inside = month_start(month, timezone) + ZONE_MARGIN, month_end(month, timezone) - ZONE_MARGIN
        _recent_months[timezone] = (inside[0].astimezone(UTC), inside[1].astimezone(UTC), month)
    return month


def month_start(month: str, timezone: str) -> datetime:
    """The first instant of a month ("YYYY-MM") in a time zone."""
    year, number = int(month[:4]), int(month[5:7])
    return datetime(year, number, 1, tzinfo=zone(timezone))


def month_end(month: str, timezone: str) -> datetime:
    """The first instant after a month ("YYYY-MM") in a time zone."""
    year, number = int(month[:4]), int(month[5:7])
    if number == 12:
        year, number = year + 1, 1
    else:
        number += 1
    return datetime(year, number, 1, tzinfo=zone(timezone))


def settled_after(month: str, grace: timedelta) -> datetime:
    """When a month can no longer take usage by its timestamp in any time zone: its end in UTC, plus a day
    (the zones), plus the grace period. Only a reservation made in it can still add to it after that."""
    return month_end(month, "UTC") + ZONE_MARGIN + grace


def utc_month_number(ts: datetime) -> int:
    """Months since 2000-01 of an aware instant in UTC, clamped to 0..MAX_MONTH_NUMBER."""
    global _recent_utc
    if _recent_utc[0] <= ts < _recent_utc[1]:
        return _recent_utc[2]
    try:
        utc = ts.astimezone(UTC)
    except (OverflowError, ValueError, OSError):
        return 0 if ts.year < _FIRST_YEAR else MAX_MONTH_NUMBER
    number = _clamp((utc.year - _FIRST_YEAR) * 12 + utc.month - 1)
    if 0 < number < MAX_MONTH_NUMBER and number != _recent_utc[2]:
        _recent_utc = (month_number_start(number), month_number_start(number + 1), number)
    return number


def window_month_number(ts: datetime) -> int:
    """The dedupe window's month of a usage timestamp: the UTC month of `ts` plus one day, so that the
    window's day of margin before the previous month falls into the previous month."""
    global _recent_window
    if _recent_window[0] <= ts < _recent_window[1]:
        return _recent_window[2]
    try:
        shifted = ts.astimezone(UTC) + ZONE_MARGIN
    except (OverflowError, ValueError, OSError):
        return 0 if ts.year < _FIRST_YEAR else MAX_MONTH_NUMBER
    number = _clamp((shifted.year - _FIRST_YEAR) * 12 + shifted.month - 1)
    if 0 < number < MAX_MONTH_NUMBER and number != _recent_window[2]:
        start = month_number_start(number) - ZONE_MARGIN
        _recent_window = (start, month_number_start(number + 1) - ZONE_MARGIN, number)
    return number


def month_number_start(number: int) -> datetime:
    """The first instant (UTC) of the month with this month number."""
    year, month = divmod(number, 12)
    return datetime(_FIRST_YEAR + year, month + 1, 1, tzinfo=UTC)


def _clamp(number: int) -> int:
    return 0 if number < 0 else min(number, MAX_MONTH_NUMBER)
