"""A partition's lease in JetStream's key-value store: the IO shell around budget.jetstream.lease.

Every write names the revision it expects (create: none), so the store itself decides between two
contenders or between a holder and its successor; the revision a write returns is the new fencing token.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from budget.errors import LeaseLost
from budget.jetstream.lease import (
    Held,
    LeaseTerms,
    Move,
    Sighting,
    decode_owner,
    encode_owner,
    next_move,
    observe,
)
from budget.jetstream.partitions import LEASE_BUCKET

# JetStream's "wrong last sequence" error codes: the write named a revision that is no longer the latest.
_WRONG_LAST_SEQUENCE = (10071, 10164)


async def open_lease_bucket(js: JetStreamContext, replicas: int = 3) -> KeyValue:
    """The lease bucket (created if missing): one key per partition, only its latest value kept, on disk on
    `replicas` nodes."""
    config = KeyValueConfig(bucket=LEASE_BUCKET, history=1, replicas=replicas, storage=StorageType.FILE)
    return await js.create_key_value(config)


class KvLease:
    """One process's view of one lease key: try to acquire it, renew it, release it.

    `clock` is a monotonic clock in seconds (time.monotonic; tests pass their own).
    """

    def __init__(
        self,
        kv: KeyValue,
        key: str,
        owner: str,
        terms: LeaseTerms,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kv = kv
        self.key = key
        self.owner = owner
        self.terms = terms
        self._clock = clock
        self._sighting: Sighting | None = None
        # Whose lease the last successful try_acquire took over (None: it was free): that holder stopped
        # renewing, so it is taken for dead until it shows otherwise.
        self.taken_from: str | None = None

    async def try_acquire(self, may_create: bool = True) -> Held | None:
        """The lease, if its holder let a whole TTL pass without renewing, or if it is free and
        `may_create`; else None (also when another contender's write got there first). A free lease is
        left to others by a process that holds its share already; an abandoned one never is."""
        now = self._clock()
        try:
            entry = await self._kv.get(self.key)
            owner, revision = decode_owner(entry.value), entry.revision
        except KeyNotFoundError:
            owner, revision = None, None
        self._sighting = observe(self._sighting, owner, revision, now)
        move = next_move(self._sighting, now, self.terms)
        if move is Move.WAIT or (move is Move.CREATE and not may_create):
            return None
        sent_at = self._clock()
        try:
            if move is Move.CREATE:
                token = await self._kv.create(self.key, encode_owner(self.owner))
            else:
                token = await self._kv.update(self.key, encode_owner(self.owner), last=revision)
        except KeyWrongLastSequenceError:
            return None  # someone wrote first; the next read sees who
        self.taken_from = owner if move is Move.TAKE_OVER else None
        self._sighting = None
        return Held(self.key, self.owner, token, sent_at)

    async def renew(self, held: Held) -> Held:
        """The lease with a new token, or LeaseLost if someone wrote the key since `held.token` (a successor
        took over).

        A holder whose lease lapsed by its own clock (it could not reach the store for a while, say while
        the bucket elected a new leader) may still renew: the write names its old token, so it succeeds
        only if nobody took the lease meanwhile. It must not commit between the lapse and that renewal.
        """
        sent_at = self._clock()
        try:
            token = await self._kv.update(self.key, encode_owner(self.owner), last=held.token)
        except KeyWrongLastSequenceError:
            raise LeaseLost(held.key, held.owner, held.token, "another owner wrote it since") from None
        return Held(self.key, self.owner, token, sent_at)

    async def release(self, held: Held) -> None:
        """Give the lease up at a clean stop, so a contender need not wait a TTL; LeaseLost if it was no
        longer ours (then nothing is changed)."""
        try:
            await self._kv.delete(self.key, last=held.token)
        except APIError as error:
            if error.err_code in _WRONG_LAST_SEQUENCE:
                raise LeaseLost(held.key, held.owner, held.token, "another owner wrote it since") from None
            raise
