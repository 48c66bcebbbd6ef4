"""Open reservations ordered by expiry: which are due at a given time, without scanning them all."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime


class ExpiryQueue:
    """A heap of (expires_at, reservation_id). A reservation settled early is not removed (that would be a
    linear search); its entry goes stale and `due` skips and drops it."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, str]] = []

    def push(self, expires_at: datetime, reservation_id: str) -> None:
        """Track a newly granted reservation."""
        heapq.heappush(self._heap, (expires_at, reservation_id))

    def due(self, now: datetime, is_open: Callable[[str, datetime], bool]) -> list[str]:
        """Ids of the open reservations expiring at or before `now`, oldest first.

        `is_open(reservation_id, expires_at)` says whether an entry still stands for an open reservation.
        Stale entries at the top are dropped; live ones stay until the expiry is applied, since deciding
        must not change what the ledger holds.
        """
        heap = self._heap
        while heap and not is_open(heap[0][1], heap[0][0]):
            heapq.heappop(heap)
        due: list[str] = []
        # Walk the heap in order without popping: a frontier of (entry, index), children pushed as we go.
        frontier = [(heap[0], 0)] if heap else []
        while frontier:
            (expires_at, reservation_id), index = heapq.heappop(frontier)
            if expires_at > now:
                continue  # its children expire later still
            if is_open(reservation_id, expires_at):
                due.append(reservation_id)
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return due
