"""One guarded SDK call's life: authorize, the model call (which may outlive `create` as a stream), report.

Both kinds hold `budget.client.guard` open for the call, so the reservation is renewed while the call
runs and settled by exactly one usage report. `AsyncCall` holds it in the caller's event loop;
`BlockingCall` holds it in the loop of a `BudgetThread`, for synchronous SDK clients. Finishing never
raises: once the model has answered, a report that cannot be made is logged, and the user's call goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from budget.client import BudgetClient, GuardedCall, guard
from budget.integrations.thread import BudgetThread

log = logging.getLogger("margins.integrations")

Outcome = Literal["ok", "error", "aborted"]
FINISH_TIMEOUT_S = 30.0  # a blocking finish waits this long for the report to reach the outbox


@dataclass(frozen=True, slots=True)
class Usage:
    """A call's tokens in margins' terms: `input_tokens` counts every prompt token, of which
    `cached_input_tokens` were read from and `cache_write_tokens` written to the provider's prompt cache."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0

    def as_report(self) -> dict[str, Any]:
        """The usage as `BudgetClient.report` reads it."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_input_tokens},
            "cache_write_tokens": self.cache_write_tokens,
        }


NOTHING = Usage(0, 0)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one call is authorized for: the worst case of its prompt and of its output."""

    user_id: str
    model: str
    max_input_tokens: int
    max_output_tokens: int
    feature: str


class AsyncCall:
    """An authorized call in the caller's event loop; `model` is what to call (cheaper on degrade)."""

    def __init__(self, held: contextlib.AbstractAsyncContextManager[GuardedCall], call: GuardedCall) -> None:
        self._held = held
        self._call = call
        self._finished = False
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, budget: BudgetClient, limits: Limits) -> AsyncCall:
        """Authorize; raises BudgetDenied or AuthorizationTimeout (nothing is held then)."""
        held = guard(
            budget,
            limits.user_id,
            limits.model,
            limits.max_output_tokens,
            max_input_tokens=limits.max_input_tokens,
            feature=limits.feature,
        )
        return cls(held, await held.__aenter__())

    @property
    def model(self) -> str:
        return self._call.model

    async def finish(self, usage: Usage, outcome: Outcome) -> None:
        """Report `usage` and release the hold; the first finish counts, later ones do nothing."""
        if self._finished:
            return
        self._finished = True
        try:
            self._call.record(usage.as_report(), outcome)
            await self._held.__aexit__(None, None, None)
        except Exception:
            log.exception("usage of a call of %s not reported", self._call.user_id)

    def abandon(self, usage: Usage, outcome: Outcome) -> None:
        """`finish` from any thread without waiting, for a stream dropped before it settled."""
        if self._finished:
            return
        finishing = self.finish(usage, outcome)
        try:
            self._loop.call_soon_threadsafe(_run_detached, finishing)
        except RuntimeError:  # the loop is closed: the client's outbox is gone with it
            finishing.close()
            log.error(
                "usage of a dropped stream of %s not reported: its event loop is closed", self._call.user_id
            )


class BlockingCall:
    """An authorized call for synchronous code: `guard` is held by a task in a BudgetThread's loop, which
    waits for `finish` from the calling thread."""

    def __init__(self, budget: BudgetThread, model: str, done: asyncio.Future[tuple[Usage, Outcome]]) -> None:
        self._budget = budget
        self._done = done
        self._held: concurrent.futures.Future[None] | None = None
        self.model = model

    @classmethod
    def open(cls, budget: BudgetThread, limits: Limits) -> BlockingCall:
        """Authorize, blocking; raises BudgetDenied or AuthorizationTimeout (nothing is held then)."""
        granted: concurrent.futures.Future[tuple[str, asyncio.Future[tuple[Usage, Outcome]]]]
        granted = concurrent.futures.Future()
        held = budget.submit(_hold(budget.client, limits, granted))
        waits: list[concurrent.futures.Future[Any]] = [granted, held]
        concurrent.futures.wait(waits, return_when=concurrent.futures.FIRST_COMPLETED)
        if not granted.done():
            held.result()  # raises what authorize raised
            raise RuntimeError("guard returned without granting")  # pragma: no cover - _hold always grants
        model, done = granted.result()
        call = cls(budget, model, done)
        call._held = held
        return call

    def finish(self, usage: Usage, outcome: Outcome) -> None:
        """Report `usage` and release the hold, waiting until the report is in the outbox; the first
        finish counts, later ones do nothing."""
        held = self._held
        if held is None:
            return
        self._held = None
        try:
            self._budget.loop.call_soon_threadsafe(_resolve, self._done, (usage, outcome))
            held.result(timeout=FINISH_TIMEOUT_S)
        except Exception:
            log.exception("usage of a call under model %s not reported", self.model)

    def abandon(self, usage: Usage, outcome: Outcome) -> None:
        """`finish` without waiting, for a stream dropped before it settled (from any thread, the
        BudgetThread's own included)."""
        if self._held is None:
            return
        self._held = None
        try:
            self._budget.loop.call_soon_threadsafe(_resolve, self._done, (usage, outcome))
        except RuntimeError:
            log.error(
                "usage of a dropped stream under model %s not reported: its BudgetThread stopped", self.model
            )


async def _hold(
    budget: BudgetClient,
    limits: Limits,
    granted: concurrent.futures.Future[tuple[str, asyncio.Future[tuple[Usage, Outcome]]]],
) -> None:
    done: asyncio.Future[tuple[Usage, Outcome]] = asyncio.get_running_loop().create_future()
    async with guard(
        budget,
        limits.user_id,
        limits.model,
        limits.max_output_tokens,
        max_input_tokens=limits.max_input_tokens,
        feature=limits.feature,
    ) as call:
        granted.set_result((call.model, done))
        usage, outcome = await done
        call.record(usage.as_report(), outcome)


def _resolve(done: asyncio.Future[tuple[Usage, Outcome]], result: tuple[Usage, Outcome]) -> None:
    if not done.done():
        done.set_result(result)


_detached: set[asyncio.Task[None]] = set()  # abandoned calls' reports under way: a task needs a reference


def _run_detached(finishing: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(finishing, name="margins-report-dropped-stream")
    _detached.add(task)
    task.add_done_callback(_detached.discard)
