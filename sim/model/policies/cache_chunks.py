"""A cache layer served a chunk of time at a time, carrying its LRU stack from one chunk to the next.

A run's accesses are split by time: chunk k holds those with T_k <= t < T_{k+1}, in stream order. Fed in
order, each with the state the one before returned, the chunks get exactly the hits of one whole
`cache.lookup` -- the day loop of the streaming engine keeps a day of accesses in memory, not a month.

How: the carried state is the LRU stack as it stands after the chunk -- the most recently touched slots,
least recent first, each with its key (-1: a slot a one-off prompt holds), its entry's write time and its
last touch. The next chunk is served by the same code as a whole run (`cache.serve`), behind a short
history that rebuilds that stack: each key written at its write time and, when touched since, touched
again at its last touch (a hit while the entry is fresh, else a drawn false hit: a touch that stores
nothing); each one-off slot touched once. The history's accesses are all earlier than the chunk's and
hold at most `capacity` distinct keys, so none of them is pushed out before the chunk; its hits are
dropped. Only keys that can still be found, or that decide what is, are carried (see `CacheState`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.errors import ArgumentError
from sim.model.policies.access_order import by_time
from sim.model.policies.cache import LayerHits, Served, serve


@dataclass(frozen=True, slots=True)
class CacheState:
    """A cache layer's LRU stack between two chunks of its accesses, least recently touched slot first.

    Size: at most `capacity` slots -- the most recently touched distinct keys (and one-off prompts, which
    hold a slot each), with what decides their hits: the entry's write time and the order of last touches.
    Slots below the deepest keyed one are dropped (nothing they push out can be found). Without drawn false
    hits (false_hit = 0: exact and fragment layers) slots below the deepest entry still alive (written
    within ttl_s of the chunk's last access) are dropped too -- they can only be rewritten, which touches
    the LRU as a new key would, and they sit below every slot whose rank can still matter: so under an
    unbounded capacity only the entries alive at the boundary and the keys touched after the oldest of
    them's last touch are carried, at most the accesses of the last TTL. With drawn false hits an expired
    entry still matters while it holds its slot (a false hit that finds it touches it), so up to
    `capacity` slots stay. A slot takes 24 bytes (100,000 slots: 2.4 MB).
    """

    key: np.ndarray  # int64: the slot's key; -1: a one-off prompt's slot
    written: np.ndarray  # float64: when the key's entry was written (NaN for a one-off)
    touched: np.ndarray  # float64: the slot's last touch
    served_until: float  # the last access time served so far (-inf before any)

    @classmethod
    def empty(cls) -> CacheState:
        """The state before the first chunk: an empty cache."""
        nothing = np.zeros(0, dtype=np.float64)
        return cls(np.zeros(0, dtype=np.int64), nothing, nothing, -np.inf)

    @property
    def slots(self) -> int:
        """How many slots the state carries."""
        return int(self.key.size)


def lookup_chunk(
    keys: np.ndarray,
    times: np.ndarray,
    ttl_s: float,
    capacity: int,
    true_hit: float,
    false_hit: float,
    u_true: np.ndarray,
    u_false: np.ndarray,
    state: CacheState,
    last: bool = False,
) -> tuple[LayerHits, CacheState]:
    """`cache.lookup` of one chunk of a run's accesses -- all later than those `state` has served, in
    stream order -- given the state the previous chunk left; and the state after it.

    The draws `u_true`, `u_false` are uniforms in [0, 1) (false hits are drawn where u_false < false_hit).
    `last`: no chunk follows, so no state is carried on (an empty one is returned) and which drawn false
    hits touch the LRU is worked out only where an outcome depends on it -- as `cache.lookup` does.
    Raises ArgumentError when the chunk does not come after the one before in time.
    """
    if keys.size == 0:
        nothing = np.zeros(0, dtype=bool)
        return LayerHits(nothing, nothing.copy()), state
    earliest = float(times.min())
    if not earliest > state.served_until:
        raise ArgumentError(
            "times",
            f"the chunk starts at {earliest}, not after the previous chunk's last access at "
            f"{state.served_until}: split a run's accesses by time and feed the chunks in order",
        )
    h = 0
    if state.slots:
        (keys, times, u_true, u_false), h = _behind_history(
            state, ttl_s, true_hit, (keys, times, u_true, u_false)
        )
    hits, served = serve(
        keys, times, ttl_s, capacity, true_hit, false_hit, u_true, u_false, exact_touches=not last
    )
    if last:
        return LayerHits(hits.true_hit[h:], hits.false_hit[h:]), CacheState.empty()
    might_false = u_false < false_hit
    carried = _carry(keys, times, might_false, served, capacity, ttl_s, false_hit)
    return LayerHits(hits.true_hit[h:], hits.false_hit[h:]), carried


def _behind_history(
    state: CacheState, ttl_s: float, true_hit: float, chunk: tuple[np.ndarray, ...]
) -> tuple[tuple[np.ndarray, ...], int]:
    """The chunk's accesses (keys, times, true- and false-hit draws) behind a history of accesses that
    leaves an empty cache as `state` describes; and the history's length.

    The history is in time order (so the engine's sorts by time take it as it is): every slot's last
    touch comes least recent first, so ties in time keep the stack's order; a key touched after its write
    is written first, at its write time (ahead of the touches at that time: stream order only breaks
    ties, and a write is never a slot's last touch, so where the writes fall among the touches decides
    nothing). The history holds at most `capacity` distinct keys: no write is pushed out before its
    key's touch. Written straight into the arrays the chunk joins (no intermediate copies).
    """
    keyed = state.key >= 0
    rewritten = keyed & (state.touched > state.written)
    # A touch after the write: a hit while the entry is fresh (when hits can happen), else a drawn false
    # hit, which touches the key that is there and stores nothing.
    found = rewritten & (state.touched - state.written < ttl_s) & (true_hit > 0)
    tentative = rewritten & ~found
    write_key, write_time = state.key[rewritten], state.written[rewritten]
    by_write = np.argsort(write_time, kind="stable")
    write_key, write_time = write_key[by_write], write_time[by_write]
    # the stack is in time order: each write goes ahead of the touches at or after its time
    write_place = np.searchsorted(state.touched, write_time, side="left") + np.arange(write_key.size)
    h = state.slots + write_key.size
    touch_place = np.ones(h, dtype=bool)
    touch_place[write_place] = False
    history: tuple[tuple[np.ndarray | np.float64, np.ndarray | np.float64], ...] = (
        (state.key, write_key),
        (state.touched, write_time),
        (np.float64(0.0), np.float64(0.0)),
        (np.where(tentative, -np.inf, np.inf), np.float64(np.inf)),
    )
    joined = []
    for (touches, writes), now in zip(history, chunk, strict=True):
        both = np.empty(h + now.size, dtype=np.result_type(touches, now))
        head = both[:h]
        if write_key.size:
            head[touch_place] = touches
            head[write_place] = writes
        else:
            head[:] = touches
        both[h:] = now
        joined.append(both)
    return tuple(joined), h


def _carry(
    keys: np.ndarray,
    times: np.ndarray,
    might_false: np.ndarray,
    served: Served,
    capacity: int,
    ttl_s: float,
    false_hit: float,
) -> CacheState:
    """The LRU stack after the accesses `served`, cut to what can still decide a hit (see CacheState)."""
    groups = np.cumsum(served.first) - 1
    touched_key, last_touch = _last_per_group(served.touches, groups)
    written_key, last_write = _last_per_group(served.writes, groups)
    write_of = np.full(int(np.count_nonzero(served.first)), -1, dtype=np.int64)
    write_of[written_key] = last_write
    # Every key touched was written: its first touch stores (a drawn false hit touches only what is there).
    write_at = write_of[touched_key]
    assert bool((write_at >= 0).all()), "a key touched without a write"
    touch_position = served.order[last_touch]
    # Each slot by the access that touched it last: a key's last touch, or a one-off that stored (each
    # holds a slot of its own). Marked in place, they come out in stream order without a sort ...
    last = (keys < 0) & ~might_false
    last[touch_position] = True
    slots = np.flatnonzero(last)
    slot_time = times[slots]
    # ... so one sort by time keeps ties in stream order, as they were served; an LRU of `capacity`
    # slots holds the latest. Those are all at or after the `capacity`-th latest time: only such slots
    # (in stream order still) are sorted.
    if slots.size > capacity:
        cut = slots.size - capacity
        latest = slot_time >= np.partition(slot_time, cut)[cut]
        slots, slot_time = slots[latest], slot_time[latest]
    stack = slots[by_time(slot_time)][-capacity:]
    slot_key = keys[stack].astype(np.int64, copy=False)
    slot_key[slot_key < 0] = -1
    write_time = np.full(times.size, np.nan)  # by a slot's last touch: its key's entry's write time
    write_time[touch_position] = times[served.order[write_at]]
    written, touched = write_time[stack], times[stack].astype(np.float64, copy=False)
    served_until = float(times.max())
    keep = slot_key >= 0  # with drawn false hits, an expired entry may still be found (and touched)
    if false_hit <= 0:
        keep &= served_until - written < ttl_s  # else a key is found again only while its entry lives
    deepest = int(np.argmax(keep)) if keep.any() else stack.size
    return CacheState(slot_key[deepest:], written[deepest:], touched[deepest:], served_until)


def _last_per_group(mask: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each group (contiguous, ascending) with an index in `mask`: the group and its last such index."""
    indices = np.flatnonzero(mask)
    of = groups[indices]
    last = np.r_[of[1:] != of[:-1], True] if indices.size else np.zeros(0, dtype=bool)
    return of[last], indices[last]
