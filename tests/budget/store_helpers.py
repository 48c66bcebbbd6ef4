"""Building event stores for the store's tests, and looking at their files."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from budget.domain.events import Event, UsageRecorded
from budget.store.event_store import EventStore

T0 = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)


def usage_events(n: int, start: int = 0, users: int = 5) -> list[Event]:
    """Usage spread over two months (October's last hour, then November)."""
    return [
        UsageRecorded(
            event_id=f"e{i}",
            user_id=f"u{i % users}",
            ts=T0 + timedelta(minutes=7 * i),
            model=("gpt-4o", "gpt-4o-mini")[i % 2],
            input_tokens=100 + i,
            output_tokens=10,
            cost_nanos=1_000 + i,
            feature=("chat", "search", "summary")[i % 3],
            month=(T0 + timedelta(minutes=7 * i)).strftime("%Y-%m"),
        )
        for i in range(start, start + n)
    ]


def write_store(root: Path, flushes: Sequence[int], start: int = 0) -> list[Event]:
    """A store holding one flushed segment per entry of `flushes` (its number of events); the events."""
    events: list[Event] = []
    with EventStore.open(root, flush_interval=None, offload=False) as store:
        for count in flushes:
            batch = usage_events(count, start=start + len(events))
            store.append(batch)
            store.flush()
            events += batch
    return events


def replayed(root: Path) -> list[Event]:
    with EventStore.open(root, flush_interval=None, offload=False) as store:
        return list(store.replay())


def spend_by_user_month(events: Sequence[Event]) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for event in events:
        if isinstance(event, UsageRecorded):
            key = (event.user_id, event.month or "")
            totals[key] = totals.get(key, 0) + event.cost_nanos
    return totals


def file_states(root: Path) -> dict[str, str]:
    """Every file under `root` (but the LOCK) and the sha256 of its content: to show nothing changed."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }
