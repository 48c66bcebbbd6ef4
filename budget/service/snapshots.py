"""The enforcer's ledger snapshots: a start-up restores the newest usable one and replays only the events
after it; a running enforcer takes new ones as its ledger goes on and writes them off the event loop.

A snapshot is an optimisation, never the truth (the journal is). It is used only when it verifies (the
store checks its files), its parts fit together (the ledger checks them) and it was taken under the same
settings that shape the ledger's state -- the snapshot format, the month grace, the reservation TTL and
the default time zone. Otherwise the enforcer logs why and replays the whole log, as it did before there
were snapshots. Caps and plans are not among those settings: they shape decisions, not the folded state.

A snapshot describes the ledger after the event with store seq `seq`. The ledger runs ahead of the store
(a batch is applied before its commit), so a snapshot taken with k events still uncommitted has seq
`last_seq + k` and is written only once the store holds that seq: a crash before then writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from budget.domain.config import EnforcerConfig
from budget.domain.ledger import Ledger, LedgerSnapshot
from budget.domain.prices import PriceCatalog
from budget.domain.snapshot import FORMAT
from budget.errors import SnapshotError
from budget.service.defaults import SNAPSHOT_EVERY_EVENTS, SNAPSHOT_EVERY_S
from budget.store.event_store import EventStore
from budget.store.snapshots import Snapshot

log = logging.getLogger("margins.enforce")

META = "ledger.json"  # the part holding LedgerSnapshot's metadata and the settings key


def settings_key(config: EnforcerConfig) -> str:
    """What a snapshot must have been taken under to be used with `config` (see the module docstring)."""
    shaping = [FORMAT, config.month_grace_s, config.reservation_ttl_s, config.default_timezone]
    return hashlib.sha256(json.dumps(shaping).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Restored:
    """A ledger caught up with the store: from the snapshot at `snapshot_seq` (None: a full replay) plus
    `replayed` events after it."""

    ledger: Ledger
    snapshot_seq: int | None
    replayed: int


def restore(store: EventStore, config: EnforcerConfig, prices: PriceCatalog) -> Restored:
    """The ledger the store's events give: the newest usable snapshot plus the events after it."""
    ledger, seq = _from_snapshot(store.latest_snapshot(), config, prices)
    replayed = 0
    apply = ledger.apply
    for event in store.replay(after_seq=-1 if seq is None else seq):
        apply(event)
        replayed += 1
    return Restored(ledger, seq, replayed)


def _from_snapshot(
    snapshot: Snapshot | None, config: EnforcerConfig, prices: PriceCatalog
) -> tuple[Ledger, int | None]:
    if snapshot is None:
        return Ledger(config, prices), None
    where = snapshot.path.name
    try:
        meta = json.loads(bytes(snapshot.parts[META]))
        if meta.get("settings") != settings_key(config):
            log.warning(
                "snapshot %s was taken under other month_grace_s, reservation_ttl_s or default_timezone "
                "settings: replaying the whole log",
                where,
            )
            return Ledger(config, prices), None
        arrays = {name: part for name, part in snapshot.parts.items() if isinstance(part, np.ndarray)}
        ledger = Ledger.from_snapshot(config, prices, LedgerSnapshot.decode(meta, arrays))
    except (SnapshotError, KeyError, ValueError, TypeError) as error:
        log.warning("snapshot %s cannot be restored (%s): replaying the whole log", where, error)
        return Ledger(config, prices), None
    return ledger, snapshot.seq


class SnapshotTaker:
    """Takes a snapshot of `ledger` every `every_events` committed events or `every_s` seconds with any,
    one at a time: taken on the event loop between two events (a copy of the arrays that change), encoded
    and written in a thread of its own. `covered` is the seq of the snapshot the ledger was restored from
    (None after a full replay: then the first commit, or the stop, snapshots what the replay built)."""

    def __init__(
        self,
        store: EventStore,
        ledger: Ledger,
        settings: str,
        *,
        covered: int | None,
        every_events: int = SNAPSHOT_EVERY_EVENTS,
        every_s: float = SNAPSHOT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store, self._ledger, self._settings = store, ledger, settings
        self._every_events, self._every_s, self._clock = every_events, every_s, clock
        self._last_seq = -1 if covered is None else covered  # the newest snapshot's seq (None: none)
        self._last_at = clock()
        self._waiting: LedgerSnapshot | None = None  # taken, its seq not yet in the store
        self._writing: Future[Path] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="margins-snapshot")
        self.written = 0

    def after_commit(self, uncommitted: int) -> None:
        """Called after each commit with how many events the ledger holds that the store does not yet."""
        last_seq = self._store.last_seq
        if self._busy():  # one at a time: a snapshot due meanwhile is taken after this one
            return
        if self._waiting is not None:
            if last_seq >= self._waiting.seq:
                self._write(self._waiting)
                self._waiting = None
            return
        if not self._due(last_seq + uncommitted):
            return
        snapshot = self._ledger.to_snapshot(last_seq + uncommitted)
        if uncommitted:
            self._waiting = snapshot
        else:
            self._write(snapshot)

    def final(self, uncommitted: int) -> None:
        """At a clean stop: a last snapshot if the ledger moved since the newest and the store holds all of
        it (`uncommitted` is 0), written before returning, so the next start replays nothing."""
        if self._writing is not None:
            self._wait(self._writing)
        last_seq = self._store.last_seq
        if uncommitted == 0 and last_seq > self._last_seq:
            self._write(self._ledger.to_snapshot(last_seq))
            assert self._writing is not None
            self._wait(self._writing)
        self._thread.shutdown(wait=True)

    def _due(self, seq: int) -> bool:
        moved = seq - self._last_seq
        return moved >= self._every_events or (moved > 0 and self._clock() - self._last_at >= self._every_s)

    def _busy(self) -> bool:
        if self._writing is None:
            return False
        if not self._writing.done():
            return True
        self._wait(self._writing)
        self._writing = None
        return False

    def _write(self, snapshot: LedgerSnapshot) -> None:
        self._last_seq, self._last_at = snapshot.seq, self._clock()
        self._writing = self._thread.submit(self._encode_and_write, snapshot)

    def _encode_and_write(self, snapshot: LedgerSnapshot) -> Path:
        meta, arrays = snapshot.encode()
        meta["settings"] = self._settings
        parts: dict[str, bytes | np.ndarray] = {META: json.dumps(meta).encode(), **arrays}
        started = time.perf_counter()
        path = self._store.write_snapshot(snapshot.seq, parts)
        log.info("snapshot at seq %d written in %.2f s", snapshot.seq, time.perf_counter() - started)
        return path

    def _wait(self, writing: Future[Path]) -> None:
        """A failed snapshot is logged, not raised: the journal still holds everything."""
        try:
            writing.result()
            self.written += 1
        except Exception as error:  # any failure: the next start replays more, that is all
            log.warning("a ledger snapshot could not be written: %s", error)
