"""One tick of the fast path's clock: the attempts due in it, in vectorized rounds, rate windows in order.

Calm stretches -- where every window's known load fits its limits, so the order of calls inside a window
changes nothing -- go in bulk rounds. From the first window that would overflow, windows are played one
at a time in time order, so the calls the client's queue sends at a window's start are served there
before the calls that arrive later, as in the per-request reference; once a window is played, the calls
it queued join the queue in the order they were refused (sim/model/queue.py). The one difference left: a
follow-up made and due inside the same window it came from is counted after that window's other calls.
"""

from __future__ import annotations

import numpy as np

from sim.model.attempts import AttemptLog, CallSheet, Load, Pending, RateWindows, run_round
from sim.model.policies import provider, retry
from sim.model.queue import ClientQueue
from sim.model.scenario import Scenario


class TickRunner:
    """Plays ticks for one run; counts the rounds it made (a measure of the work done)."""

    def __init__(
        self,
        scenario: Scenario,
        table: provider.ProviderTable,
        windows: RateWindows,
        sheet: CallSheet,
        key: int,
        log: AttemptLog,
    ) -> None:
        self.scenario, self.table, self.windows, self.sheet, self.key, self.log = (
            scenario,
            table,
            windows,
            sheet,
            key,
            log,
        )
        self.rounds = 0
        policy = scenario.retry
        self.queue = ClientQueue(policy.queue_windows, windows) if policy.policy == "cost-aware" else None

    def _round(self, batch: Pending, fits_all: bool = False, load: Load | None = None) -> Pending:
        self.rounds += 1
        return run_round(
            self.scenario,
            self.table,
            self.windows,
            self.sheet,
            self.key,
            batch,
            self.log,
            fits_all,
            load,
            self.queue,
        )

    def _settle(self, pending: Pending) -> Pending:
        return pending if self.queue is None else self.queue.settle(pending)

    def _first_contested(self, batch: Pending, load: Load) -> float:
        return self.windows.first_contested(load.window, batch.model, load.tokens)

    def run(self, batch: Pending, tick_end: float) -> Pending:
        """Make every attempt due before tick_end; returns the follow-ups due later."""
        later: list[Pending] = []
        while batch.size:
            load = Load.of(self.windows, batch)  # read by the check and by the calm round alike
            calm = batch.t < self._first_contested(batch, load)
            if calm.any():
                follow = self._settle(self._round(batch.take(calm), fits_all=True, load=load.take(calm)))
                batch = Pending.join([batch.take(~calm), follow])
            else:
                batch = self._contested_stretch(batch)
            due = batch.t < tick_end
            later.append(batch.take(~due))
            batch = batch.take(due)
        return Pending.join(later) if later else batch

    def _contested_stretch(self, batch: Pending) -> Pending:
        """Play windows one at a time from the first, while they overflow; return what is left."""
        batch = batch.take(np.argsort(batch.t, kind="stable"))
        position, extra = 0, batch.take(slice(0, 0))
        while position < batch.size or extra.size:
            head = batch.t[position] if position < batch.size else np.inf
            start = min(head, float(extra.t.min(initial=np.inf)))
            window_end = (np.floor(start / retry.RATE_WINDOW_S) + 1.0) * retry.RATE_WINDOW_S
            stop = int(np.searchsorted(batch.t, window_end, side="left"))
            inside = extra.t < window_end
            now = Pending.join([batch.take(slice(position, stop)), extra.take(inside)])
            extra = extra.take(~inside)
            position = stop
            while now.size:  # follow-ups due in this same window go after its other calls
                follow = self._round(now)
                inside = follow.t < window_end
                now, extra = follow.take(inside), Pending.join([extra, follow.take(~inside)])
            extra = self._settle(extra)  # calls this window queued, in the order they were refused
            if not self._overflows(batch, position, extra, window_end):
                break
        return Pending.join([batch.take(slice(position, batch.size)), extra])

    def _overflows(self, batch: Pending, position: int, extra: Pending, window_start: float) -> bool:
        """Would the next window, with its arrivals and the calls waiting for it, overflow?"""
        window_end = window_start + retry.RATE_WINDOW_S
        stop = int(np.searchsorted(batch.t, window_end, side="left"))
        waiting = extra.t < window_end
        upcoming = Pending.join([batch.take(slice(position, stop)), extra.take(waiting)])
        if not upcoming.size:
            return False
        return bool(self._first_contested(upcoming, Load.of(self.windows, upcoming)) < window_end)
