"""Streamed responses of guarded calls: items pass through as they arrive, and the call is settled once.

A provider module supplies a `Tally` that reads each item: whether the user sees it, the provider's final
usage once it came, and what was received so far. The wrapper settles the call

- with the final usage (outcome ok) as soon as the provider sent it;
- when the stream ends without it, with what was received (outcome ok);
- when the stream raises, with what was received (outcome error), and re-raises;
- when it is closed (or its `with` block left) before the end, with what was received (outcome aborted);
- when it is dropped unsettled (garbage-collected: a loop left with `break`, say), likewise, without
  waiting for the report to reach the outbox.

Settling never raises into the user's code (see budget.integrations.calls).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from budget.integrations.calls import AsyncCall, BlockingCall, Outcome, Usage

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)


class Tally(Protocol[T_contra]):
    """A provider's reading of its stream's items."""

    def see(self, item: T_contra) -> bool:
        """Take in one item; whether the user should receive it."""

    def final(self) -> Usage | None:
        """The usage the provider reported for the whole call, once it has."""

    def received(self) -> Usage:
        """The usage to report for what has arrived, if the stream ends here."""


class _SyncStream(Protocol[T_co]):
    def __next__(self) -> T_co: ...
    def close(self) -> None: ...


class _AsyncStream(Protocol[T_co]):
    def __anext__(self) -> Any: ...
    async def close(self) -> None: ...


class GuardedStream(Generic[T]):
    """A synchronous SDK stream whose usage is reported (module docstring); iterate it, or use `with`."""

    def __init__(self, stream: _SyncStream[T], tally: Tally[T], call: BlockingCall) -> None:
        self.unguarded = stream
        self._tally = tally
        self._call = call
        weakref.finalize(self, _abandon, tally, call)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        while True:
            try:
                item = next(self.unguarded)
            except StopIteration:
                self._settle("ok")
                raise
            except BaseException:
                self._settle("error")
                raise
            if self._tally.see(item):
                self._settle_if_final()
                return item
            self._settle_if_final()

    def close(self) -> None:
        """Close the response; a call not yet settled is reported with what was received (aborted)."""
        try:
            self.unguarded.close()
        finally:
            self._settle("aborted")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name == "unguarded":  # not set yet: never recurse
            raise AttributeError(name)
        return getattr(self.unguarded, name)  # the SDK stream's other attributes (response, ...)

    def _settle_if_final(self) -> None:
        final = self._tally.final()
        if final is not None:
            self._call.finish(final, "ok")

    def _settle(self, outcome: Outcome) -> None:
        final = self._tally.final()
        if final is not None:
            self._call.finish(final, "ok")
        else:
            self._call.finish(self._tally.received(), outcome)


class AsyncGuardedStream(Generic[T]):
    """An asynchronous SDK stream whose usage is reported (module docstring); iterate it with `async for`,
    or use `async with`."""

    def __init__(self, stream: _AsyncStream[T], tally: Tally[T], call: AsyncCall) -> None:
        self.unguarded = stream
        self._tally = tally
        self._call = call
        weakref.finalize(self, _abandon, tally, call)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            try:
                item: T = await self.unguarded.__anext__()
            except StopAsyncIteration:
                await self._settle("ok")
                raise
            except BaseException:
                await self._settle("error")
                raise
            if self._tally.see(item):
                await self._settle_if_final()
                return item
            await self._settle_if_final()

    async def close(self) -> None:
        """Close the response; a call not yet settled is reported with what was received (aborted)."""
        try:
            await self.unguarded.close()
        finally:
            await self._settle("aborted")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        if name == "unguarded":
            raise AttributeError(name)
        return getattr(self.unguarded, name)

    async def _settle_if_final(self) -> None:
        final = self._tally.final()
        if final is not None:
            await self._call.finish(final, "ok")

    async def _settle(self, outcome: Outcome) -> None:
        final = self._tally.final()
        if final is not None:
            await self._call.finish(final, "ok")
        else:
            await self._call.finish(self._tally.received(), outcome)


def _abandon(tally: Tally[Any], call: BlockingCall | AsyncCall) -> None:
    """A stream dropped unsettled: report what it received (nothing, if it was settled already)."""
    final = tally.final()
    if final is not None:
        call.abandon(final, "ok")
    else:
        call.abandon(tally.received(), "aborted")
