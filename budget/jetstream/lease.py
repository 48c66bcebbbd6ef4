"""A partition's lease, decided without IO: who may take it, when it may be taken over, and until when
its holder may go on deciding. budget.jetstream.kv_lease does the reads and writes in the key-value store.

The fencing token is the lease key's revision: the store raises it on every write and refuses a write
that names a revision other than the latest. No clock is compared between machines:

- a contender takes over a lease it has seen at one revision for a whole TTL *of its own clock* (its
  holder missed every renewal meanwhile), by a write naming that revision;
- a holder counts its lease from the moment it *sent* the write that gave it its token, and stops at a
  TTL minus a safety margin after that, so it has stopped before any contender's TTL of sighting (which
  starts after that write was stored) can have run out.

A holder paused past that point (a GC, a stopped VM) could still wake and act on a stale token; the
journal append is fenced by the store for that case (README, "Scaling out").
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    """How long a lease lasts without renewal, and how early its holder stops before that."""

    ttl_s: float = 4.0
    safety_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.safety_s < self.ttl_s:
            raise ValueError(
                f"a lease needs 0 <= safety_s < ttl_s (got ttl_s={self.ttl_s}, safety_s={self.safety_s})"
            )

    @property
    def renew_every_s(self) -> float:
        """How often a holder renews: four tries before a contender could take over."""
        return self.ttl_s / 4


@dataclass(frozen=True, slots=True)
class Held:
    """A lease this process holds: `token` is the revision of its last successful write, sent at
    `sent_at` on this process's monotonic clock."""

    key: str
    owner: str
    token: int
    sent_at: float

    def valid_until(self, terms: LeaseTerms) -> float:
        """The monotonic time after which the holder must not commit on this token."""
        return self.sent_at + terms.ttl_s - terms.safety_s

    def is_valid(self, now: float, terms: LeaseTerms) -> bool:
        """Whether the holder may still decide and commit at `now` (checked before every commit)."""
        return now < self.valid_until(terms)


@dataclass(frozen=True, slots=True)
class Sighting:
    """What a contender last saw of a lease: its owner and revision (None: nobody holds it), and since when
    (its own monotonic clock) it has seen that same revision."""

    owner: str | None
    revision: int | None
    since: float


def observe(previous: Sighting | None, owner: str | None, revision: int | None, now: float) -> Sighting:
    """The sighting after reading the lease at `now`: the same revision keeps its first sighting's time."""
    if previous is not None and previous.revision == revision and revision is not None:
        return previous
    return Sighting(owner, revision, now)


class Move(enum.Enum):
    """What a contender does next about a lease."""

    CREATE = "create"  # nobody holds it: create the key (refused if someone else just did)
    TAKE_OVER = "take_over"  # its holder missed a whole TTL of renewals: write naming that revision
    WAIT = "wait"  # held, and renewed (or first seen) less than a TTL ago


def next_move(sighting: Sighting, now: float, terms: LeaseTerms) -> Move:
    """What a contender may do about the lease it sighted, at `now`."""
    if sighting.revision is None:
        return Move.CREATE
    if now - sighting.since >= terms.ttl_s:
        return Move.TAKE_OVER
    return Move.WAIT


def encode_owner(owner: str) -> bytes:
    """The lease value: its owner's name."""
    return owner.encode()


def decode_owner(value: bytes | None) -> str:
    """The owner named by a lease value (one that is not UTF-8 is shown escaped, never raised on)."""
    return (value or b"").decode(errors="backslashreplace")


def fair_share(partitions: int, members: int) -> int:
    """How many partitions one of `members` live enforcers takes of its own accord: N / members, rounded
    up, so that together they hold every partition."""
    return -(-partitions // max(1, members))


def beyond_share(held: Iterable[int], share: int) -> list[int]:
    """The partitions a holder gives up to come down to `share` (its highest-numbered ones: any choice is
    fair, and a fixed one keeps two holders from trading the same partitions back and forth)."""
    return sorted(held)[share:]
