"""User ids to dense indexes, without a Python object per user.

A dict of a million user ids costs ~140 MB (the strings, the int values, the table). Here the ids live
back to back in one bytearray (UTF-8, with `ends` marking where each stops) and an open-addressing table
of int32 slots maps each id's hash to its index: ~36 bytes a user. A lookup hashes the id (Python's hash:
cached on the string, and this process's own, so the table is rebuilt on restore), probes the table and
confirms a match against the stored bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_MIN_SLOTS = 1 << 10
_MAX_LOAD = 0.5  # linear probing stays short below half full


def _utf8(user_id: str) -> bytes:
    try:
        return user_id.encode()
    except UnicodeEncodeError:  # lone surrogates: kept, lossless
        return user_id.encode("utf-8", "surrogatepass")


class UserIndex:
    """User ids by dense index: `find`, `add`, and the ids back by index."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._count = 0
        self._set_columns(np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._set_slots(np.zeros(_MIN_SLOTS, np.int32))

    def _set_columns(self, ends: np.ndarray, hashes: np.ndarray) -> None:
        self._ends, self._hashes = ends, hashes
        self._ends_view, self._hashes_view = ends.data, hashes.data

    def _set_slots(self, slots: np.ndarray) -> None:
        self._slots, self._slots_view, self._mask = slots, slots.data, len(slots) - 1

    def __len__(self) -> int:
        return self._count

    def find(self, user_id: str) -> int | None:
        """The user's index, or None for a user never added."""
        digest = hash(user_id)
        slots, hashes, mask = self._slots_view, self._hashes_view, self._mask
        slot = digest & mask
        while True:
            taken = slots[slot]
            if taken == 0:
                return None
            index: int = taken - 1
            if hashes[index] == digest:  # confirm against the stored bytes, in place
                encoded = _utf8(user_id)
                ends = self._ends_view
                start = ends[index - 1] if index else 0
                if ends[index] - start == len(encoded) and self._blob.startswith(encoded, start):
                    return index
            slot = (slot + 1) & mask

    def add(self, user_id: str) -> int:
        """The user's index, given the next one if new."""
        index = self.find(user_id)
        if index is not None:
            return index
        index = self._count
        if index == len(self._ends):
            size = max(2 * index, _MIN_SLOTS)
            self._set_columns(_resized(self._ends, size), _resized(self._hashes, size))
        self._blob += _utf8(user_id)
        self._ends_view[index] = len(self._blob)
        self._hashes_view[index] = hash(user_id)
        self._count += 1
        if self._count > _MAX_LOAD * len(self._slots):
            self._rebuild(2 * len(self._slots))
        else:
            self._place(index)
        return index

    def _place(self, index: int) -> None:
        slots, mask = self._slots_view, self._mask
        slot = self._hashes_view[index] & mask
        while slots[slot]:
            slot = (slot + 1) & mask
        slots[slot] = index + 1

    def _rebuild(self, size: int) -> None:
        """A table of `size` slots holding every index (vectorized linear probing: by home slot, each
        entry takes the first free slot from its home on)."""
        homes = self._hashes[: self._count] & (size - 1)
        order = np.argsort(homes, kind="stable")
        entries, homes = order, homes[order]
        while True:
            steps = np.arange(len(entries))
            at = np.maximum.accumulate(homes - steps) + steps
            over = at >= size
            if not over.any():
                break
            # The run passed the end: those entries wrap around to the start, ahead of every other.
            entries = np.concatenate([entries[over], entries[~over]])
            homes = np.concatenate([np.zeros(int(over.sum()), np.int64), homes[~over]])
        slots = np.zeros(size, np.int32)
        slots[at] = entries + 1
        self._set_slots(slots)

    def _bytes(self, index: int) -> bytes:
        start = self._ends_view[index - 1] if index else 0
        return bytes(self._blob[start : self._ends_view[index]])

    def id_of(self, index: int) -> str:
        """The user id at `index`."""
        return self._bytes(index).decode("utf-8", "surrogatepass")

    def ids_of(self, indexes: Iterable[int]) -> list[str]:
        """The user ids at `indexes` (many at once: the ids are decoded together when they are ASCII)."""
        wanted = list(indexes)
        if len(wanted) < 64 or not self._blob.isascii():
            return [self.id_of(index) for index in wanted]
        text = self._blob.decode("ascii")  # byte offsets are character offsets
        ends = self._ends[: self._count]
        starts = np.concatenate([[0], ends[:-1]])
        at = np.array(wanted, dtype=np.int64)
        return [text[a:b] for a, b in zip(starts[at].tolist(), ends[at].tolist(), strict=True)]

    def subset(self, keep: np.ndarray) -> UserIndex:
        """An index of the users `keep` marks (a bool per index), renumbered in their order."""
        count, keep = self._count, keep[: self._count]
        lengths = np.diff(self._ends[:count], prepend=0)
        kept = UserIndex()
        kept._blob = bytearray(np.frombuffer(bytes(self._blob), np.uint8)[np.repeat(keep, lengths)].tobytes())
        kept._count = int(np.count_nonzero(keep))
        kept._set_columns(np.cumsum(lengths[keep]), self._hashes[:count][keep])
        slots = _MIN_SLOTS
        while kept._count > _MAX_LOAD * slots:
            slots *= 2
        kept._rebuild(slots)
        return kept

    def frozen(self) -> tuple[bytes, np.ndarray]:
        """(the ids' bytes, where each ends): copies, for a snapshot."""
        return bytes(self._blob), self._ends[: self._count].copy()

    @classmethod
    def thaw(cls, blob: bytes, ends: np.ndarray) -> UserIndex:
        """The index `frozen` described; raises ValueError when the parts disagree or an id repeats."""
        if len(ends) and (int(ends[-1]) != len(blob) or bool(np.any(np.diff(ends) < 0)) or int(ends[0]) < 0):
            raise ValueError("user id ends do not cut the id bytes")
        index = cls()
        index._blob = bytearray(blob)
        index._count = len(ends)
        starts = [0, *ends.tolist()][:-1]
        cuts = zip(starts, ends.tolist(), strict=True)
        hashes = np.fromiter(
            (hash(blob[a:b].decode("utf-8", "surrogatepass")) for a, b in cuts), np.int64, len(ends)
        )
        index._set_columns(ends.astype(np.int64), hashes)
        slots = _MIN_SLOTS
        while len(ends) > _MAX_LOAD * slots:
            slots *= 2
        index._rebuild(slots)
        values, counts = np.unique(hashes, return_counts=True)
        for shared in values[counts > 1].tolist():  # equal hashes: the ids must still differ
            same = np.flatnonzero(hashes == shared).tolist()
            if len({index._bytes(i) for i in same}) != len(same):
                raise ValueError("user ids repeat")
        return index


def _resized(array: np.ndarray, size: int) -> np.ndarray:
    bigger = np.zeros(size, dtype=array.dtype)
    bigger[: len(array)] = array
    return bigger
