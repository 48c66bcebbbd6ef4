"""A partition's journal on the wire, without IO: how a committed batch of events becomes journal messages,
and back.

A journal message holds consecutive events of the partition, one encoded event per line, and says in its
headers which event seqs it holds: the seq of its first event in the partition's event store and how many
events follow. The journal and the store hold the same events in the same order (the owner appends to
the journal first, then to its store), so "what the store lacks" is "the journal's events from the
store's next seq on". A message with no events marks a change of owner (LeaseTaken): it names the owner
and the token it took the lease with, and is the fence a paused old owner's next append runs into.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from budget.domain.events import Event, decode_event

FIRST_SEQ_HEADER = "Margins-First-Seq"
EVENTS_HEADER = "Margins-Events"
LEASE_TAKEN_HEADER = "Margins-Lease-Taken"
EXPECTED_LAST_HEADER = "Nats-Expected-Last-Subject-Sequence"
MSG_ID_HEADER = "Nats-Msg-Id"
# NATS refuses messages over its max_payload (1 MiB by default): a batch is cut into messages of at most
# this much, so a large batch after a pause still fits.
MAX_BODY_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class JournalChunk:
    """One journal message: `count` events from store seq `first_seq` on (none for a LeaseTaken mark)."""

    first_seq: int
    count: int
    body: bytes
    lease_taken: str | None = None  # "owner token" on a change-of-owner mark

    @property
    def end_seq(self) -> int:
        """The store seq after its last event."""
        return self.first_seq + self.count

    def headers(self, expected_last: int, msg_id: str) -> dict[str, str]:
        """Its headers for an append fenced on `expected_last` (the journal's last seq its writer knows; 0
        for an empty journal) and deduplicated by `msg_id` when the append is retried."""
        headers = {
            FIRST_SEQ_HEADER: str(self.first_seq),
            EVENTS_HEADER: str(self.count),
            EXPECTED_LAST_HEADER: str(expected_last),
            MSG_ID_HEADER: msg_id,
        }
        if self.lease_taken is not None:
            headers[LEASE_TAKEN_HEADER] = self.lease_taken
        return headers


def chunks(bodies: list[bytes], first_seq: int, max_body: int = MAX_BODY_BYTES) -> list[JournalChunk]:
    """Encoded events (store seqs from `first_seq` on) cut into journal messages of at most `max_body`
    bytes each (a single event larger than that gets a message of its own)."""
    out: list[JournalChunk] = []
    start, size = 0, 0
    for index, body in enumerate(bodies):
        if index > start and size + len(body) + 1 > max_body:
            out.append(_chunk(bodies, start, index, first_seq))
            start, size = index, 0
        size += len(body) + 1
    if start < len(bodies):
        out.append(_chunk(bodies, start, len(bodies), first_seq))
    return out


def _chunk(bodies: list[bytes], start: int, end: int, first_seq: int) -> JournalChunk:
    return JournalChunk(first_seq + start, end - start, b"\n".join(bodies[start:end]))


def lease_taken(owner: str, token: int, next_seq: int) -> JournalChunk:
    """The change-of-owner mark a new owner appends before anything else."""
    return JournalChunk(next_seq, 0, b"", lease_taken=f"{owner} {token}")


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A journal message read back: where its events start, how many, and their lines."""

    first_seq: int
    count: int
    body: bytes

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.count

    def events(self, from_seq: int) -> list[Event]:
        """Its events whose store seq is `from_seq` or later, decoded."""
        if self.count == 0:
            return []
        lines = self.body.split(b"\n")
        if len(lines) != self.count:
            raise ValueError(f"a journal message says it holds {self.count} events and holds {len(lines)}")
        return [decode_event(line) for line in lines[max(0, from_seq - self.first_seq) :]]


def read_entry(headers: Mapping[str, str] | None, body: bytes) -> JournalEntry:
    """A journal message's entry; ValueError naming the header when it is not one of margins'."""
    headers = headers or {}
    try:
        first_seq, count = int(headers[FIRST_SEQ_HEADER]), int(headers[EVENTS_HEADER])
    except KeyError as missing:
        raise ValueError(f"a journal message without its {missing.args[0]} header") from None
    except ValueError:
        what = f"{FIRST_SEQ_HEADER} or {EVENTS_HEADER}"
        raise ValueError(f"a journal message whose {what} is not a number") from None
    return JournalEntry(first_seq, count, body)
