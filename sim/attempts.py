"""Provider attempts in vectorized rounds: rate-limit windows, outcomes, retries, queues.

The fast path's inner loop. A round takes every pending attempt due before the end of the current tick,
admits or rejects each against its model's requests- and tokens-per-minute window (fixed one-minute
windows, in time order inside a round; an attempt that a retry or queue puts into a window comes after
the attempts already counted there), draws the admitted attempts' outcomes, prices them, and asks the
retry policy what follows. Follow-ups due inside the tick make the next round; later ones wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.policies import provider, retry
from sim.policies.outcomes import ERROR, RATE_LIMITED, TIMEOUT
from sim.randomness import hashed_uniform
from sim.scenario import Scenario

ATTEMPT_FIELDS = (
    "call",
    "t",
    "attempt_no",
    "retries_used",
    "queued",
    "regenerated",
    "previous_t",
    "previous_rank",
)


@dataclass(slots=True)
class Pending:
    """Attempts waiting to be made, as parallel arrays."""

    call: np.ndarray
    t: np.ndarray
    attempt_no: np.ndarray
    retries_used: np.ndarray
    queued: np.ndarray
    regenerated: np.ndarray
    # When the attempt that led here was made, and its place in its window: calls due at the same
    # instant (those queued for a window's start) are served first come, first served.
    previous_t: np.ndarray
    previous_rank: np.ndarray

    @classmethod
    def first_attempts(cls, call: np.ndarray, t: np.ndarray) -> Pending:
        zeros = np.zeros(call.size, dtype=np.int64)
        return cls(
            call, t, zeros, zeros.copy(), zeros.copy(), np.zeros(call.size, dtype=bool), t, zeros.copy()
        )

    def take(self, mask: np.ndarray | slice) -> Pending:
        if isinstance(mask, np.ndarray) and mask.dtype == bool:
            if mask.all():
                return self  # arrays are never written in place, so sharing them is safe
            if not mask.any():
                mask = slice(0, 0)
        return Pending(*(getattr(self, name)[mask] for name in ATTEMPT_FIELDS))

    @staticmethod
    def join(parts: list[Pending]) -> Pending:
        filled = [part for part in parts if part.size] or parts[:1]
        if len(filled) == 1:
            return filled[0]
        return Pending(*(np.concatenate([getattr(p, name) for p in filled]) for name in ATTEMPT_FIELDS))

    @property
    def size(self) -> int:
        return int(self.call.size)


@dataclass(slots=True)
class AttemptLog:
    """Every attempt made, in the order processed; arrays are joined once at the end."""

    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            self.parts.setdefault(name, []).append(values)

    def column(self, name: str) -> np.ndarray:
        """One column of every attempt, joined on first use and kept joined (read many times after)."""
        values = self.parts.get(name)
        if not values:
            return np.zeros(0)
        if len(values) > 1:
            values[:] = [np.concatenate(values)]
        return values[0]


@dataclass(frozen=True, slots=True)
class CallSheet:
    """What the attempt loop needs to know about each call (indexed by call id)."""

    model: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    input_price: np.ndarray  # nano-dollars per token, per model index
    output_price: np.ndarray
    # The provider's prompt cache (sim/policies/prompt_cache.py): per call, input tokens read from it and
    # written to it, and their prices per model index. None: no prompt caching.
    cached_input: np.ndarray | None = None
    cache_write: np.ndarray | None = None
    cached_price: np.ndarray | None = None
    write_price: np.ndarray | None = None

    def prompt_cache_bill(
        self, call: np.ndarray, model: np.ndarray, billed_in: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Of the billed input, the tokens read from and written to the prompt cache, and what that saves
        (negative: costs more) against the plain input price. An attempt that bills no input reads none."""
        zeros = np.zeros(call.size, dtype=np.int64)
        if self.cached_input is None or self.cache_write is None:
            return zeros, zeros, zeros
        assert self.cached_price is not None and self.write_price is not None
        billed = billed_in > 0
        read = np.where(billed, self.cached_input[call], 0)
        wrote = np.where(billed, self.cache_write[call], 0)
        saving = read * (self.input_price[model] - self.cached_price[model]) + wrote * (
            self.input_price[model] - self.write_price[model]
        )
        return read, wrote, saving


class RateWindows:
    """Admitted requests and tokens per (model, one-minute window), and which windows have closed.

    A window admits calls in time order while both its requests- and tokens-per-minute budgets hold;
    once it rejects one, it rejects every call until it resets (the reference plays the same rule).
    """

    def __init__(self, table: provider.ProviderTable, horizon_s: float) -> None:
        self.windows = int(horizon_s // retry.RATE_WINDOW_S) + 1
        size = table.rpm.size * self.windows
        self.requests = np.zeros(size, dtype=np.int64)
        self.tokens = np.zeros(size, dtype=np.int64)
        self.closed = np.zeros(size, dtype=bool)
        self.table = table
        self.rpm_by_group = np.repeat(table.rpm, self.windows)
        self.tpm_by_group = np.repeat(table.tpm, self.windows)

    def group(self, t: np.ndarray, model: np.ndarray) -> np.ndarray:
        window = np.minimum((t // retry.RATE_WINDOW_S).astype(np.int64), self.windows - 1)
        grouped: np.ndarray = model * self.windows + window
        return grouped

    def first_contested(self, t: np.ndarray, model: np.ndarray, tokens: np.ndarray) -> float:
        """Start of the earliest window these attempts would overflow (inf when all of them fit).

        Counts per model over the span of windows the attempts touch (a day's, not the month's).
        """
        group = self.group(t, model)
        earliest = np.inf
        for index in range(self.table.rpm.size):
            selected = model == index
            mine = group[selected]
            if mine.size:
                earliest = min(earliest, self._first_over(mine, tokens[selected]))
        return earliest * retry.RATE_WINDOW_S

    def _first_over(self, group: np.ndarray, tokens: np.ndarray) -> float:
        """The earliest window (index) among one model's groups whose load would overflow it."""
        low = int(group.min())
        span = int(group.max()) - low + 1
        count = np.bincount(group - low, minlength=span)
        load = np.bincount(group - low, weights=tokens, minlength=span)
        part = slice(low, low + span)
        over = (count > 0) & (
            self.closed[part]
            | (self.requests[part] + count > self.rpm_by_group[part])
            | (self.tokens[part] + load > self.tpm_by_group[part])
        )
        if not over.any():
            return float("inf")
        return float(((np.flatnonzero(over) + low) % self.windows).min())

    def admit(
        self, batch: Pending, model: np.ndarray, tokens: np.ndarray, fits_all: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Which attempts get through, and each one's place in its window's order.

        Admitted ones are counted and a window that rejects one closes. Calls are served by time; calls
        due at the same instant (those queued for a window's start) in the order they were queued.
        `fits_all` says the caller checked (first_contested) that every window holds them all: then the
        order changes nothing and the sort is skipped.
        """
        t = batch.t
        group = self.group(t, model)
        if fits_all:
            self._count(group, tokens)
            return np.ones(t.size, dtype=bool), np.zeros(t.size, dtype=np.int64)
        window_start = (group % self.windows) * retry.RATE_WINDOW_S
        # (group, time) as one float key: group * 64 s + seconds into its window; then queueing order.
        time_key = group * 64.0 + np.minimum(t - window_start, 63.999)
        order = np.lexsort((batch.previous_rank, batch.previous_t, time_key))
        grouped = group[order]
        starts = np.r_[True, grouped[1:] != grouped[:-1]]
        start_index = np.maximum.accumulate(np.where(starts, np.arange(order.size), 0))
        rank = np.arange(order.size) - start_index + 1
        running = np.cumsum(tokens[order])
        running = running - running[start_index] + tokens[order][start_index]
        limit_model = model[order]
        fits = (
            ~self.closed[grouped]
            & (self.requests[grouped] + rank <= self.table.rpm[limit_model])
            & (self.tokens[grouped] + running <= self.table.tpm[limit_model])
        )
        misses = np.cumsum(~fits)
        admitted_sorted = (misses - misses[start_index] + ~fits[start_index]) == 0
        admitted = np.empty(order.size, dtype=bool)
        admitted[order] = admitted_sorted
        place = np.empty(order.size, dtype=np.int64)
        place[order] = rank
        self._count(group[admitted], tokens[admitted])
        self.closed[group[~admitted]] = True
        return admitted, place

    def _count(self, group: np.ndarray, tokens: np.ndarray) -> None:
        if group.size < self.requests.size // 8:  # a small round: touch only the windows it uses
            np.add.at(self.requests, group, 1)
            np.add.at(self.tokens, group, tokens)
            return
        # A large round: one pass over all windows beats np.add.at. Token sums per window stay far
        # below 2**53, so bincount's float64 weights are exact.
        self.requests += np.bincount(group, minlength=self.requests.size)
        self.tokens += np.bincount(group, weights=tokens, minlength=self.tokens.size).astype(np.int64)


def run_round(
    scenario: Scenario,
    table: provider.ProviderTable,
    windows: RateWindows,
    sheet: CallSheet,
    key: int,
    batch: Pending,
    log: AttemptLog,
    fits_all: bool = False,
) -> Pending:
    """Make one round of attempts, log them, and return the follow-ups they lead to."""
    model = sheet.model[batch.call]
    inputs, outputs = sheet.input_tokens[batch.call], sheet.output_tokens[batch.call]
    admitted, place = windows.admit(batch, model, inputs + outputs, fits_all)
    outcome = np.full(batch.size, RATE_LIMITED, dtype=np.int64)
    duration = np.full(batch.size, provider.RATE_LIMIT_REPLY_S)
    visible = np.zeros(batch.size)
    billed_in = np.zeros(batch.size, dtype=np.int64)
    billed_out = np.zeros(batch.size, dtype=np.int64)
    if admitted.any():
        made = provider.attempt(
            scenario,
            table,
            key,
            batch.call[admitted],
            batch.attempt_no[admitted],
            batch.regenerated[admitted],
            model[admitted],
            inputs[admitted],
            outputs[admitted],
        )
        outcome[admitted], duration[admitted], visible[admitted] = (
            made.outcome,
            made.duration_s,
            made.first_visible_s,
        )
        billed_in[admitted], billed_out[admitted] = made.billed_input, made.billed_output
    jitter = np.zeros(batch.size)
    unanswered = (outcome == RATE_LIMITED) | (outcome == ERROR) | (outcome == TIMEOUT)
    jitter[unanswered] = hashed_uniform(
        key, batch.call[unanswered], batch.attempt_no[unanswered], provider.SALT_JITTER
    )
    plan = retry.follow_up(
        scenario.retry, outcome, batch.t, duration, batch.retries_used, batch.queued, jitter
    )
    billed_cached, billed_write, saving = sheet.prompt_cache_bill(batch.call, model, billed_in)
    cost = billed_in * sheet.input_price[model] + billed_out * sheet.output_price[model] - saving
    log.add(
        call=batch.call,
        t=batch.t,
        model=model.astype(np.int8),  # small codes kept small: the log holds every attempt of the run
        outcome=outcome.astype(np.int8),
        action=plan.action.astype(np.int8),
        billed_input=billed_in,
        billed_output=billed_out,
        billed_cached=billed_cached,
        billed_write=billed_write,
        cost_nanos=cost,
        visible_at=batch.t + visible,
        finished_at=batch.t + duration,
    )
    again = (plan.action == retry.RETRY) | (plan.action == retry.QUEUE) | (plan.action == retry.REGENERATE)
    follow = Pending(
        call=batch.call[again],
        t=plan.next_t[again],
        attempt_no=batch.attempt_no[again] + 1,
        retries_used=batch.retries_used[again] + (plan.action[again] == retry.RETRY),
        queued=batch.queued[again] + (plan.action[again] == retry.QUEUE),
        regenerated=batch.regenerated[again] | (plan.action[again] == retry.REGENERATE),
        previous_t=batch.t[again],
        previous_rank=place[again],
    )
    return follow
