"""A partition's journal on the cluster: the fenced append and the read-back, the IO shell around
budget.jetstream.journal_codec.

The journal has a stream of its own (`MARGINS_J<p>`, one subject), so a journal message's stream seq is
also its subject seq: the fence (`Nats-Expected-Last-Subject-Sequence`) names it, and reading the journal
"from store seq S on" is a binary search over stream seqs by the messages' first-seq headers, then a walk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from budget.errors import JournalError, LeaseLost
from budget.jetstream.journal_codec import JournalChunk, JournalEntry, read_entry
from budget.jetstream.partitions import journal_stream_name, journal_subject

# JetStream's "wrong last sequence" error codes: another writer appended since the seq the append named.
WRONG_LAST_SEQUENCE = (10071, 10164)
# What an append or a read meets while a stream elects a leader (a node lost): retried, not raised.
TRANSIENT = (nats.errors.TimeoutError, NoStreamResponseError, nats.errors.NoRespondersError)
RETRY_PAUSE_S = 0.2


class Journal:
    """One partition's journal, as one owner (`owner`, holding the lease at `token`) writes and reads it."""

    def __init__(self, js: JetStreamContext, partition: int, owner: str, token: int) -> None:
        self._js = js
        self.partition = partition
        self.owner = owner
        self.token = token
        self._stream = journal_stream_name(partition)
        self._subject = journal_subject(partition)

    async def last_seq(self, may_go_on: Callable[[], bool]) -> int:
        """The stream seq of the journal's last message (0: empty), retried while `may_go_on()`."""
        while True:
            try:
                info = await self._js.stream_info(self._stream)
                return int(info.state.last_seq)
            except TRANSIENT:
                await self._pause_or_give_up(may_go_on, "reading the journal's last seq")

    async def append(self, chunk: JournalChunk, expected_last: int, may_go_on: Callable[[], bool]) -> int:
        """Append `chunk` if the journal's last message is still `expected_last`; its stream seq.

        LeaseLost when another owner appended since (the fence), or when an append that cannot get through
        (its stream electing a leader) outlasts `may_go_on()` -- the lease's local validity. A retry carries
        the same message id, so an append the stream stored but whose acknowledgement was lost is not
        stored twice: the stream answers with the first one's seq."""
        msg_id = f"p{self.partition}:{self.owner}:{self.token}:{chunk.first_seq}:{chunk.count}"
        headers = chunk.headers(expected_last, msg_id)
        while True:
            try:
                ack = await self._js.publish(self._subject, chunk.body, headers=dict(headers))
                return int(ack.seq)
            except APIError as error:
                if error.err_code in WRONG_LAST_SEQUENCE:
                    raise LeaseLost(
                        f"partition.{self.partition}", self.owner, self.token, "another owner appended since"
                    ) from None
                raise
            except TRANSIENT:
                await self._pause_or_give_up(may_go_on, "appending to the journal")

    async def entries_from(
        self, store_seq: int, through: int, may_go_on: Callable[[], bool]
    ) -> AsyncIterator[JournalEntry]:
        """The journal's messages holding events from store seq `store_seq` on, up to stream seq `through`
        (inclusive), in order."""
        seq = await self._first_holding(store_seq, through, may_go_on)
        while seq <= through:
            entry = await self.entry(seq, may_go_on)
            if entry.end_seq > store_seq:
                yield entry
            seq += 1

    async def _first_holding(self, store_seq: int, through: int, may_go_on: Callable[[], bool]) -> int:
        """The first stream seq (1..through+1) whose message ends after `store_seq`: entries' end seqs never
        decrease along the stream, so a binary search finds it in log2(messages) reads."""
        low, high = 1, through + 1
        while low < high:
            middle = (low + high) // 2
            if (await self.entry(middle, may_go_on)).end_seq > store_seq:
                high = middle
            else:
                low = middle + 1
        return low

    async def entry(self, seq: int, may_go_on: Callable[[], bool]) -> JournalEntry:
        """The journal message at stream seq `seq`; JournalError if it is missing or not margins'."""
        while True:
            try:
                message = await self._js.get_msg(self._stream, seq)
            except NotFoundError:
                raise JournalError(self.partition, f"message {seq} is missing") from None
            except TRANSIENT:
                await self._pause_or_give_up(may_go_on, "reading the journal")
                continue
            try:
                return read_entry(message.headers, message.data or b"")
            except ValueError as error:
                raise JournalError(self.partition, f"message {seq}: {error}") from None

    async def _pause_or_give_up(self, may_go_on: Callable[[], bool], doing: str) -> None:
        if not may_go_on():
            raise LeaseLost(
                f"partition.{self.partition}",
                self.owner,
                self.token,
                f"the lease ran out while {doing} (the cluster did not answer)",
            )
        await asyncio.sleep(RETRY_PAUSE_S)
