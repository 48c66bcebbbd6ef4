"""The dedupe index: which usage events (user, event id) the ledger has counted, in bounded memory.

A usage event's idempotency key is a 64-bit hash of (user_id, event_id); beside it the index keeps a
32-bit digest of the report's content, to tell a redelivery (same digest: nothing happens) from a
different report reusing the id (a conflicting duplicate, dead-lettered), and the month number of its
timestamp's dedupe window (see budget.domain.months), to forget it once that month leaves the window.

Layout: the key space is cut into 64 partitions by the key's top bits. Each partition is a sorted numpy
run (keys int64, digests uint32, months uint16: 14 bytes an entry) plus a small dict of recent entries;
a dict that reaches `stage_limit` entries is merged into its run, which costs one copy of that run (about
1/64 of the index, ~2 MB at 10M keys: about a millisecond). A lookup is a dict probe and one binary
search. Forgetting old months is spread out the same way: one partition per insert.

Nearly every lookup is of a new key, which the run does not hold. Beside each run a one-bit-per-slot
filter marks the slot of each of its keys (the key modulo the slots); an unmarked slot answers "not held"
without the binary search, which costs several times more from Python. A marked slot (the key's, or 1 in
8 to 1 in 4 of the others) searches as before. A filter is built with FILTER_BITS slots a key (one byte a
key); a merge marks its new keys in a copy (a rebuild would cost more than the merge: ~1.4 ms against
~0.8 ms at 10M keys), until the run has doubled (MIN_FILTER_BITS slots a key) or lost keys to forgetting,
which build it anew. So the filters take 0.5-1 byte a key: 5-10 MB at 10M keys.

A 64-bit key collision between two different events (about 3e-6 over 10M keys) shows as a conflicting
duplicate, which is kept as a dead letter; only a collision of key and digest together (about 1e-15)
would take a new event for a redelivery.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from hashlib import blake2b

import msgspec
import numpy as np

PARTITION_BITS = 6
PARTITIONS = 1 << PARTITION_BITS
_SHIFT = 64 - PARTITION_BITS
_HALF = PARTITIONS // 2  # signed keys: the top bits run from -32 to 31
DIGEST_MASK = 0xFFFF_FFFF
STAGE_LIMIT = 4096
FILTER_BITS = 8  # filter slots per key in a run, when built
MIN_FILTER_BITS = 4  # below this many slots per key, a merge builds the filter anew
_EMPTY_FILTER = (bytes(8), 64)  # a run of no keys: every slot unmarked

_pack = msgspec.msgpack.encode
_signed_64 = struct.Struct("<q").unpack
_PAIR = b"\x92"  # msgpack: an array of two

KeyHasher = blake2b


def usage_key(user_id: str, event_id: str) -> int:
    """The idempotency key of a usage event: (user_id, event_id) packed as a msgpack pair and hashed to a
    signed 64-bit integer (8 bytes of BLAKE2b, little-endian)."""
    return usage_key_of(key_hasher(user_id), event_id)


def key_hasher(user_id: str) -> KeyHasher:
    """A hasher fed with the first half of a user's keys, to be copied for each of their events (which
    costs less than starting a hash)."""
    return blake2b(_PAIR + _pack(user_id), digest_size=8)


def usage_key_of(hasher: KeyHasher, event_id: str) -> int:
    """`usage_key(user_id, event_id)` given `key_hasher(user_id)`."""
    h = hasher.copy()
    h.update(_pack(event_id))
    key: int = _signed_64(h.digest())[0]
    return key


def content_digest(
    ts: datetime,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int,
    cache_write_tokens: int,
    feature: str,
    outcome: str,
    reservation_id: str | None,
) -> int:
    """A 32-bit digest of everything a usage report says besides its key (the instant, not how its time
    zone was written: msgpack encodes a timestamp in UTC)."""
    return zlib.crc32(
        _pack(
            (
                ts,
                model,
                input_tokens,
                output_tokens,
                cached_input_tokens,
                cache_write_tokens,
                feature,
                outcome,
                reservation_id,
            )
        )
    )


class SeenIndex:
    """Keys of counted usage events with their content digest and window month; see the module doc."""

    def __init__(self, stage_limit: int | None = None) -> None:
        self._stage_limit = STAGE_LIMIT if stage_limit is None else stage_limit
        self._keys = [np.empty(0, np.int64) for _ in range(PARTITIONS)]
        self._digests = [np.empty(0, np.uint32) for _ in range(PARTITIONS)]
        self._months = [np.empty(0, np.uint16) for _ in range(PARTITIONS)]
        self._key_views = [keys.data for keys in self._keys]
        self._filters = [_EMPTY_FILTER[0]] * PARTITIONS
        self._filter_slots = [_EMPTY_FILTER[1]] * PARTITIONS
        # Recent entries per partition: key -> digest | month << 32.
        self._stages: list[dict[int, int]] = [{} for _ in range(PARTITIONS)]
        self.first_month = 0  # entries of earlier window months are forgotten
        self._unpruned = 0  # partitions from here on may still hold forgotten entries

    def __len__(self) -> int:
        held = sum(int(np.count_nonzero(months >= self.first_month)) for months in self._months)
        return held + sum(
            sum(1 for value in stage.values() if value >> 32 >= self.first_month) for stage in self._stages
        )

    def get(self, key: int) -> int | None:
        """The entry of `key` as digest | month << 32, or None if it is not (or no longer) held."""
        p = (key >> _SHIFT) + _HALF
        found = self._stages[p].get(key)
        if found is None:
            slot = key % self._filter_slots[p]
            if not self._filters[p][slot >> 3] >> (slot & 7) & 1:
                return None
            keys = self._keys[p]
            i = int(keys.searchsorted(key))
            if i == len(keys) or self._key_views[p][i] != key:
                return None
            found = int(self._digests[p][i]) | int(self._months[p][i]) << 32
        return found if found >> 32 >= self.first_month else None

    def add(self, key: int, digest: int, month: int) -> None:
        """Hold a key that `get` does not find (a key held already would be held twice)."""
        p = (key >> _SHIFT) + _HALF
        stage = self._stages[p]
        stage[key] = digest | month << 32
        if len(stage) >= self._stage_limit:
            self._merge(p)
        if self._unpruned < PARTITIONS:
            self._prune(self._unpruned)
            self._unpruned += 1

    def insert(self, key: int, digest: int, month: int) -> bool:
        """Hold `key` unless it is held already (False then). A key of a month before the window is only
        looked up: it would be forgotten at once."""
        # get and add in one (a replay calls this for every usage)
        p = (key >> _SHIFT) + _HALF
        stage = self._stages[p]
        found = stage.get(key)
        if found is None:
            slot = key % self._filter_slots[p]
            if self._filters[p][slot >> 3] >> (slot & 7) & 1:
                keys = self._keys[p]
                i = keys.searchsorted(key)
                if i < len(keys) and self._key_views[p][i] == key:
                    found = int(self._months[p][i]) << 32
        if found is not None and found >> 32 >= self.first_month:
            return False
        if month >= self.first_month:
            stage[key] = digest | month << 32
            if len(stage) >= self._stage_limit:
                self._merge(p)
            if self._unpruned < PARTITIONS:
                self._prune(self._unpruned)
                self._unpruned += 1
        return True

    def forget_before(self, first_month: int) -> None:
        """Forget entries of window months before `first_month`: at once for lookups, and in memory one
        partition per `add` (or all at once by `compact`)."""
        if first_month > self.first_month:
            self.first_month = first_month
            self._unpruned = 0

    def compact(self) -> None:
        """Merge every recent entry and drop every forgotten one now."""
        for p in range(PARTITIONS):
            self._merge(p)
        self._unpruned = PARTITIONS

    def entries(self) -> Iterator[tuple[int, int, int]]:
        """Every held (key, digest, month), by partition (for comparing two indexes; slow when large)."""
        for p in range(PARTITIONS):
            keep = self._months[p] >= self.first_month
            yield from zip(
                self._keys[p][keep].tolist(),
                self._digests[p][keep].tolist(),
                self._months[p][keep].tolist(),
                strict=True,
            )
            for key, value in self._stages[p].items():
                if value >> 32 >= self.first_month:
                    yield key, value & DIGEST_MASK, value >> 32

    def _merge(self, p: int) -> None:
        stage = self._stages[p]
        count = len(stage)
        keys = np.fromiter(stage.keys(), np.int64, count)
        values = np.fromiter(stage.values(), np.uint64, count)
        order = keys.argsort()
        keys, values = keys[order], values[order]
        digests = (values & DIGEST_MASK).astype(np.uint32)
        months = (values >> 32).astype(np.uint16)
        at = self._keys[p].searchsorted(keys)
        self._set(
            p,
            np.insert(self._keys[p], at, keys),
            np.insert(self._digests[p], at, digests),
            np.insert(self._months[p], at, months),
            added=keys,
        )
        self._stages[p] = {}
        self._prune(p)

    def _prune(self, p: int) -> None:
        months = self._months[p]
        if months.size and int(months.min()) < self.first_month:
            keep = months >= self.first_month
            self._set(p, self._keys[p][keep], self._digests[p][keep], months[keep])
        stage = self._stages[p]
        if any(value >> 32 < self.first_month for value in stage.values()):
            self._stages[p] = {k: v for k, v in stage.items() if v >> 32 >= self.first_month}

    def _set(
        self,
        p: int,
        keys: np.ndarray,
        digests: np.ndarray,
        months: np.ndarray,
        added: np.ndarray | None = None,
    ) -> None:
        """Replace partition `p`'s run; `added`: the run is the old one plus these keys."""
        # Runs are replaced, never changed in place: a snapshot may hold the old ones.
        self._keys[p], self._digests[p], self._months[p] = keys, digests, months
        self._key_views[p] = keys.data
        slots = self._filter_slots[p]
        if added is not None and slots >= MIN_FILTER_BITS * len(keys):
            self._filters[p] = filter_with(self._filters[p], slots, added)
        else:
            self._filters[p], self._filter_slots[p] = run_filter(keys)

    # -- snapshots --------------------------------------------------------------------------------

    def freeze(self) -> FrozenSeen:
        """The index as it is now, cheap enough to take between two events: the runs are shared (they
        are replaced, never changed in place) and the recent entries copied."""
        return FrozenSeen(
            tuple(self._keys),
            tuple(self._digests),
            tuple(self._months),
            tuple(stage.copy() for stage in self._stages),
        )

    @classmethod
    def thaw(cls, frozen: FrozenSeen, first_month: int) -> SeenIndex:
        """An index holding what `frozen` holds."""
        index = cls()
        for p in range(PARTITIONS):
            index._set(p, frozen.keys[p], frozen.digests[p], frozen.months[p])
            index._stages[p] = dict(frozen.recent[p])
        index.first_month = first_month
        index._unpruned = 0
        return index


def run_filter(keys: np.ndarray) -> tuple[bytes, int]:
    """A run's filter (see the module docstring): the bitmap (bit `slot % 8` of byte `slot // 8`), and
    its number of slots (a key's slot is the key modulo that, as Python and numpy both take it: >= 0)."""
    if not len(keys):
        return _EMPTY_FILTER
    slots = FILTER_BITS * len(keys) + 7 & ~7  # whole bytes
    marked = np.zeros(slots, dtype=np.bool_)
    marked[keys % slots] = True
    return np.packbits(marked, bitorder="little").tobytes(), slots


def filter_with(bitmap: bytes, slots: int, keys: np.ndarray) -> bytes:
    """A copy of a run's filter with the slots of `keys` marked too."""
    marked = np.frombuffer(bitmap, np.uint8).copy()
    at = keys % slots
    np.bitwise_or.at(marked, at >> 3, (1 << (at & 7)).astype(np.uint8))
    return marked.tobytes()


@dataclass(frozen=True, slots=True)
class FrozenSeen:
    """A SeenIndex's content at one moment, per partition: sorted runs and recent entries."""

    keys: tuple[np.ndarray, ...]
    digests: tuple[np.ndarray, ...]
    months: tuple[np.ndarray, ...]
    recent: tuple[dict[int, int], ...]

    def parts(self) -> dict[str, np.ndarray]:
        """The arrays a snapshot stores: the runs concatenated (still sorted: partitions follow the key
        order) and the recent entries."""
        recent_keys = [key for stage in self.recent for key in stage]
        recent_values = [value for stage in self.recent for value in stage.values()]
        return {
            "seen.keys": np.concatenate(self.keys),
            "seen.digests": np.concatenate(self.digests),
            "seen.months": np.concatenate(self.months),
            "seen.recent_keys": np.array(recent_keys, dtype=np.int64),
            "seen.recent_values": np.array(recent_values, dtype=np.uint64),
        }

    @classmethod
    def from_parts(cls, parts: Mapping[str, np.ndarray]) -> FrozenSeen:
        """What `parts` stored; raises ValueError when the parts disagree."""
        keys, digests, months = parts["seen.keys"], parts["seen.digests"], parts["seen.months"]
        if not len(keys) == len(digests) == len(months):
            raise ValueError("seen.keys, seen.digests and seen.months differ in length")
        if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            raise ValueError("seen.keys is not strictly increasing")
        bounds = np.array([(p - _HALF) << _SHIFT for p in range(1, PARTITIONS)], dtype=np.int64)
        cuts = [0, *keys.searchsorted(bounds).tolist(), len(keys)]
        runs = [slice(cuts[p], cuts[p + 1]) for p in range(PARTITIONS)]  # views: runs are never written
        recent_keys, recent_values = parts["seen.recent_keys"], parts["seen.recent_values"]
        if len(recent_keys) != len(recent_values):
            raise ValueError("seen.recent_keys and seen.recent_values differ in length")
        recent: list[dict[int, int]] = [{} for _ in range(PARTITIONS)]
        for key, value in zip(recent_keys.tolist(), recent_values.tolist(), strict=True):
            recent[(key >> _SHIFT) + _HALF][key] = value
        return cls(
            tuple(keys[run] for run in runs),
            tuple(digests[run] for run in runs),
            tuple(months[run] for run in runs),
            tuple(recent),
        )
