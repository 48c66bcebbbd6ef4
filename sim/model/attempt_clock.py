"""The attempt clock, resumable a tick (a simulated day) at a time.

First attempts are added as they become known -- a streaming engine adds the calls of each day's requests
before it plays that day -- and each tick plays the attempts due in it through a TickRunner
(sim/model/tick.py): follow-ups spilled from earlier ticks first, then the tick's first attempts in call-id
order. The whole-run engine (sim/model/engine.py `_attempt_clock`) adds every call at once and plays
tick after tick: the same code, one chunk.

Order of a tick's arrivals: the whole run sorts first attempts stably by tick, over call ids in ascending
order, so a tick's arrivals go in call-id order. Each `add` must give its calls in ascending id order;
a tick whose arrivals came from several adds merges them back into call-id order. A call of day d's
requests may start on a later day (chain steps and summaries push it past midnight), so it waits here
until its tick.

Carried state between ticks (`AttemptClock.nbytes`):
- the rate windows: requests, tokens and a closed flag per (model, one-minute window) for the run's days
  plus RATE_HORIZON_DAYS -- 17 bytes x models x 1440 x (days + 2), independent of users (30 days, 4
  models: 3.1 MB). Windows behind the clock are not dropped: they are this small.
- the client queue's tails: a few integers per model (its logged rounds are settled inside every tick).
- follow-ups in flight: the retries and released queued calls due in later ticks, 46 bytes each (54
  with int64 token counts; two token counts more with a provider prompt cache) -- those made near
  midnight, a small share of one day's calls.
- first attempts added but not yet due, as many bytes each: with calls added a day of requests at a time,
  the ones pushed past midnight (again a small share of a day's calls).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.errors import ArgumentError
from sim.model.attempts import PENDING_FIELDS, AttemptLog, CallSheet, Pending, RateWindows
from sim.model.periods import SECONDS_PER_DAY
from sim.model.policies import provider
from sim.model.scenario import Scenario
from sim.model.tick import TickRunner

TICK_S = SECONDS_PER_DAY
# Rate windows are kept this many days past the simulated month: retries and queued calls of its last
# day land there.
RATE_HORIZON_DAYS = 2


@dataclass(frozen=True, slots=True)
class _Arrivals:
    """First attempts of one `add`, sorted by tick: tick `low + i` holds rows bounds[i]:bounds[i + 1]."""

    first: Pending
    low: int
    bounds: np.ndarray

    @property
    def last_tick(self) -> int:
        return self.low + self.bounds.size - 2

    def of_tick(self, tick: int) -> Pending:
        if not self.low <= tick <= self.last_tick:
            return self.first.take(slice(0, 0))
        return self.first.take(
            slice(int(self.bounds[tick - self.low]), int(self.bounds[tick - self.low + 1]))
        )

    def due_from(self, tick: int) -> int:
        """How many of these first attempts are due at `tick` or later."""
        index = min(max(tick - self.low, 0), self.bounds.size - 1)
        return self.first.size - int(self.bounds[index])


class AttemptClock:
    """A run's provider attempts, played a tick at a time; first attempts are added as they become known.

    `tick` is the next tick to play. `add` takes calls whose first attempt is due at this tick or later;
    `run_tick` plays one tick and returns its attempts (final: a queued call that gives up is marked in
    the tick that decides it, which is the tick that logged its refusal). `busy` says whether anything is
    left to play.
    """

    def __init__(
        self, scenario: Scenario, table: provider.ProviderTable, sheet: CallSheet, key: int, days: int
    ) -> None:
        self.sheet = sheet
        self.windows = RateWindows(table, (days + RATE_HORIZON_DAYS) * SECONDS_PER_DAY)
        self.runner = TickRunner(scenario, table, self.windows, sheet, key, AttemptLog())
        self.tick = 0
        self.waiting: list[_Arrivals] = []
        self.spill: Pending = Pending.first_attempts(sheet, np.zeros(0, dtype=np.int64), np.zeros(0))

    def use_sheet(self, sheet: CallSheet) -> None:
        """Read calls from `sheet` from now on: it must hold every call added later and every call still
        in play (a streaming engine's sheet of the calls in play, sim/model/streaming_engine.py)."""
        self.sheet = self.runner.sheet = sheet

    @property
    def rounds(self) -> int:
        """Rounds of attempts made so far (a measure of the work done)."""
        return self.runner.rounds

    @property
    def busy(self) -> bool:
        """Are first attempts waiting, or follow-ups in flight?"""
        return bool(self.waiting) or self.spill.size > 0

    def add(self, calls: np.ndarray, starts: np.ndarray) -> None:
        """First attempts of `calls` (ascending call ids) at `starts` (seconds), due this tick or later."""
        if calls.size != starts.size:
            raise ArgumentError("starts", f"has {starts.size} times for {calls.size} calls")
        if not calls.size:
            return
        if np.any(calls[1:] <= calls[:-1]):
            raise ArgumentError("calls", "must be call ids in ascending order")
        tick_of = (starts // TICK_S).astype(np.int16)  # 16 bits: numpy's stable sort is then a radix sort
        low = int(tick_of.min())
        if low < self.tick:
            raise ArgumentError(
                "starts", f"has a call due on tick {low}, before the clock's tick {self.tick}"
            )
        order = np.argsort(tick_of, kind="stable")
        first = Pending.first_attempts(self.sheet, calls[order], starts[order])
        bounds = np.searchsorted(tick_of[order], np.arange(low, int(tick_of.max()) + 2))
        self.waiting.append(_Arrivals(first, low, bounds))

    def run_tick(self, log: AttemptLog | None = None) -> AttemptLog:
        """Play the current tick into `log` (a new one when None), return it, and move to the next tick."""
        log = AttemptLog() if log is None else log
        tick_end = (self.tick + 1) * TICK_S
        due = self.spill.t < tick_end
        self.runner.log = log
        later = self.runner.run(Pending.join([self.spill.take(due), self._arrivals()]), tick_end)
        self.spill = Pending.join([self.spill.take(~due), later])
        self.tick += 1
        return log

    def run_until(self, tick: int, log: AttemptLog | None = None) -> AttemptLog:
        """Play every tick before `tick` into one log."""
        log = AttemptLog() if log is None else log
        while self.tick < tick:
            self.run_tick(log)
        return log

    def _arrivals(self) -> Pending:
        """This tick's first attempts in call-id order; adds whose last tick this is are let go."""
        parts = [arrivals.of_tick(self.tick) for arrivals in self.waiting]
        self.waiting = [arrivals for arrivals in self.waiting if arrivals.last_tick > self.tick]
        filled = [part for part in parts if part.size]
        if len(filled) <= 1:
            return filled[0] if filled else self.spill.take(slice(0, 0))
        joined = Pending.join(filled)
        return joined.take(np.argsort(joined.call, kind="stable"))

    @property
    def nbytes(self) -> int:
        """Bytes of the carried state: rate windows, follow-ups in flight, first attempts not yet due."""
        windows = self.windows.requests.nbytes + self.windows.tokens.nbytes + self.windows.closed.nbytes
        pending = _pending_bytes(self.spill)
        for arrivals in self.waiting:
            pending += arrivals.due_from(self.tick) * _row_bytes(arrivals.first)
        return windows + pending


def _row_bytes(pending: Pending) -> int:
    columns = (getattr(pending, name) for name in PENDING_FIELDS)
    return sum(values.itemsize for values in columns if values is not None)


def _pending_bytes(pending: Pending) -> int:
    return pending.size * _row_bytes(pending)
