"""The default price catalog, read once per day asked for: genai-prices' data at that day's prices.

Its data (and pydantic, which genai-prices builds it with) loads on the first call, not on import, so a
command that prices nothing starts without it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from budget.domain.prices import PriceCatalog

_READ: dict[date, PriceCatalog] = {}


def default_catalog(on: date | None = None) -> PriceCatalog:
    """The default catalog (genai-prices' data, with its history) at the prices in force on `on`
    (default: today, UTC)."""
    day = on if on is not None else datetime.now(UTC).date()
    if day not in _READ:
        from budget.domain.genai_catalog import read_catalog

        _READ[day] = read_catalog(day)
    return _READ[day]
