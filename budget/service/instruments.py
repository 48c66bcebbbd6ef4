"""What the enforcer tells an observer about itself besides its counters: the timing of each commit and of
each authorization's round through the process, and what its start-up replay took.

The enforcer knows only the `Timings` protocol; budget.service.metrics implements it with Prometheus
histograms. Without an observer the enforcer takes no timings for authorizations at all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from budget.domain.ledger import Ledger
    from budget.store.event_store import EventStore


class Timings(Protocol):
    """Receives the enforcer's timings, on its event loop: keep each call short."""

    def committed(self, seconds: float) -> None:
        """One durable commit (`EventStore.append` of a batch) took `seconds`."""

    def replied(self, arrivals: list[float], now: float) -> None:
        """The replies to authorizations that arrived at `arrivals` (`time.perf_counter()`) were handed to
        the broker connection at `now`."""


@dataclass(frozen=True, slots=True)
class ReplayStats:
    """The start-up restore: `events` replayed after the snapshot at `snapshot_seq` (None: the whole log)
    in `seconds`, the snapshot's loading included."""

    events: int
    seconds: float
    snapshot_seq: int | None


class Observed(Protocol):
    """What the metrics read from an enforcer at scrape time (budget.service.enforcer.Enforcer is one)."""

    counters: Counter[str]
    ledger: Ledger
    replay_stats: ReplayStats | None

    @property
    def store(self) -> EventStore | None:
        """The open event store (None before start and after stop)."""

    def observe_with(self, timings: Timings) -> None:
        """Hand every commit's and authorization's timing to `timings`."""
