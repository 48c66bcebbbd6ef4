"""The cost-aware client's queue: rate-limited calls wait, first come first served, for room in a window.

A call the provider refuses with a 429 shows the user a fallback and joins its model's queue. At the
start of each rate window the client releases queued calls, oldest first, while the window has room for
them -- its request and token budgets less what it already holds, as the provider's rate-limit headers
report -- and the first that does not fit waits, with everything behind it, for the next window. A call
still waiting after `queue_windows` windows gives up and fails; a call larger than a whole window's token
budget could never be sent and fails at once. Released calls go at the window's start, ahead of the
window's new calls, so the queue never fires into a window that is already full.

Under first come, first served nothing that joins later changes when an earlier call goes, so each call's
release is decided as soon as the window that refused it is over: the queue is a next-fit packing of its
calls into windows, kept per model as the last window it fills and what that window holds. (The
per-request reference plays the same rule the other way round, one window start at a time.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from sim.model.codes import Action
from sim.model.policies.retry import RATE_WINDOW_S, FollowUp
from sim.model.sorted_search import contains

if TYPE_CHECKING:
    from sim.model.attempts import Pending, RateWindows


@dataclass(slots=True)
class _Tail:
    """The last window a model's queue fills, the requests and tokens that window holds, and the provider's
    count of it when last looked at."""

    window: int = -1
    requests: int = 0
    tokens: int = 0
    seen: tuple[int, int, int, bool] = (-1, 0, 0, False)  # window, requests, tokens, closed


class ClientQueue:
    """Every model's queue for one run.

    A round's queued calls wait (due at +inf) until `settle`, called once the window they were refused
    in is over: they join in the order they were refused, whichever round refused them.
    """

    def __init__(self, queue_windows: int, windows: RateWindows) -> None:
        self.patience = queue_windows
        self.windows = windows
        self.tails = [_Tail() for _ in range(windows.table.rpm.size)]
        # Each round's logged actions and its queued calls' rows in them: a call that gives up is marked
        # there once settled.
        self.logged: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def hold(self, plan: FollowUp, batch: Pending) -> FollowUp:
        """The plan with its queued calls waiting for `settle`, and those larger than any window's token
        budget failed at once. The plan's action array is the one to log: `settle` writes GIVE_UP into it."""
        queued = np.flatnonzero(plan.action == Action.QUEUE)
        if not queued.size:
            return plan
        action, next_t = plan.action.copy(), plan.next_t.copy()
        tokens = np.add(batch.input_tokens[queued], batch.output_tokens[queued], dtype=np.int64)
        too_large = tokens > self.windows.table.tpm[batch.model[queued]]
        action[queued[too_large]] = Action.FAILED
        waiting = queued[~too_large]
        if waiting.size:
            next_t[waiting] = np.inf
            self.logged.append((action, waiting, batch.call[waiting]))
        return FollowUp(action, next_t)

    def settle(self, pending: Pending) -> Pending:
        """Decide the release of every waiting call (due at +inf) of `pending`, oldest first: due at the
        start of the window that sends it, or dropped when it gives up (its logged action: GIVE_UP)."""
        waiting = np.flatnonzero(np.isinf(pending.t))
        if not waiting.size:
            return pending
        fifo = waiting[np.lexsort((pending.previous_rank[waiting], pending.previous_t[waiting]))]
        due = pending.t.copy()
        keep = np.ones(pending.size, dtype=bool)
        tokens = np.add(pending.input_tokens[fifo], pending.output_tokens[fifo], dtype=np.int64)
        model = pending.model[fifo]
        for index in np.unique(model).tolist():
            mine = model == index
            calls = fifo[mine]
            joined = self.windows.window_of(pending.previous_t[calls])
            release = self._pack(int(index), joined, tokens[mine])
            due[calls[release >= 0]] = release[release >= 0] * RATE_WINDOW_S
            keep[calls[release < 0]] = False
        self._mark_given_up(pending.call[~keep])
        return replace(pending, t=due).take(keep)

    def _mark_given_up(self, calls: np.ndarray) -> None:
        """Write GIVE_UP into the logged actions of these calls' last refusal; forget what was logged."""
        if calls.size:
            given_up = np.sort(calls)
            for action, rows, logged_calls in self.logged:
                action[rows[contains(given_up, logged_calls)]] = Action.GIVE_UP
        self.logged.clear()

    def _pack(self, model: int, joined: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The window that sends each call (in queue order), or -1 for one that gives up.

        One step per window filled: the calls that fit are a prefix, found from running token sums.
        """
        tail = self.tails[model]
        rpm, tpm = int(self.windows.table.rpm[model]), int(self.windows.table.tpm[model])
        release = np.full(tokens.size, -1, dtype=np.int64)
        running = np.concatenate(([0], np.cumsum(tokens)))
        position = 0
        while position < tokens.size:
            if tail.window <= joined[position]:  # the queue had emptied: the next window is fresh
                tail.window = int(joined[position]) + 1
            self._look(tail, model)
            position = max(position, self._expired(joined, tail.window))
            ready = int(np.searchsorted(joined, tail.window - 1, side="right"))  # joined before it
            by_tokens = int(np.searchsorted(running, running[position] + tpm - tail.tokens, side="right"))
            end = max(position, min(ready, position + rpm - tail.requests, by_tokens - 1))
            release[position:end] = tail.window
            tail.requests += end - position
            tail.tokens += int(running[end] - running[position])
            position = end
            if position < tokens.size and position < ready:  # the window is full: on to the next
                tail.window += 1
        return release

    def _expired(self, joined: np.ndarray, window: int) -> int:
        """How many of the calls (in queue order) have waited all their windows by `window`'s start: the
        oldest ones, a prefix."""
        return int(np.searchsorted(joined, window - self.patience - 1, side="right"))

    def _look(self, tail: _Tail, model: int) -> None:
        """What the tail window holds, as the provider counts it. Unchanged since the last look: what the
        queue has put there since. Changed: it has been played (the calls the queue put there went, and
        the count has them), or it is new to the queue."""
        group = model * self.windows.windows + min(tail.window, self.windows.windows - 1)
        requests, tokens = int(self.windows.requests[group]), int(self.windows.tokens[group])
        closed = bool(self.windows.closed[group])
        seen = (tail.window, requests, tokens, closed)
        if seen == tail.seen:
            return
        tail.requests, tail.tokens, tail.seen = requests, tokens, seen
        if closed:  # it has refused a call: no room until it resets
            tail.requests = int(self.windows.table.rpm[model])
