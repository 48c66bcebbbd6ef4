"""Provider attempts in vectorized rounds: rate-limit windows, outcomes, retries, queues.

The fast path's inner loop. A round takes every pending attempt due before the end of the current tick,
admits or rejects each against its model's requests- and tokens-per-minute window (fixed one-minute
windows, in time order inside a round; an attempt that a retry or queue puts into a window comes after
the attempts already counted there), draws the admitted attempts' outcomes, prices them, and asks the
retry policy what follows. Follow-ups due inside the tick make the next round; later ones wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sim.model.codes import Action, Outcome
from sim.model.policies import provider, retry
from sim.model.randomness import Draw, hashed_uniform
from sim.model.scenario import Scenario
from sim.model.sorted_search import positions

ATTEMPT_FIELDS = (
    "call",
    "t",
    "model",
    "input_tokens",
    "output_tokens",
    "attempt_no",
    "retries_used",
    "regenerated",
    "previous_t",
    "previous_rank",
)
PRICED_FIELDS = ("price_row", "cached_input", "cache_write")  # carried when the sheet has them
PENDING_FIELDS = (*ATTEMPT_FIELDS, *PRICED_FIELDS)


class Holder(Protocol):
    """What holds the calls a cost-aware policy queues (sim/model/queue.py's ClientQueue): it may turn a
    plan's queued follow-ups into later sends or failures."""

    def hold(self, plan: retry.FollowUp, batch: Pending) -> retry.FollowUp: ...


@dataclass(slots=True)
class Pending:
    """Attempts waiting to be made, as parallel arrays."""

    call: np.ndarray  # int32 call ids
    t: np.ndarray
    # The call's model (int8 index) and token counts: looked up once, when the call is first due, and
    # carried along with its follow-ups, so that no round looks them up again.
    model: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    attempt_no: np.ndarray  # counts per call, int32: a call's attempts are rows of the log, never 2**31
    retries_used: np.ndarray
    regenerated: np.ndarray
    # When the attempt that led here was made, and its place in its window: calls due at the same
    # instant (those queued for a window's start) are served first come, first served.
    previous_t: np.ndarray
    previous_rank: np.ndarray
    # What pricing reads of the call, when the sheet has it (else None): its price row (prices tiered by
    # prompt size) and the input tokens it reads from and writes to the provider's prompt cache. Carried
    # like the model: a streaming engine's sheet is searched by call id, once per call, not per round.
    price_row: np.ndarray | None = None
    cached_input: np.ndarray | None = None
    cache_write: np.ndarray | None = None

    @classmethod
    def first_attempts(cls, sheet: CallSheet, call: np.ndarray, t: np.ndarray) -> Pending:
        """The first attempt of each call in `call`, due at `t`."""
        counts = np.zeros(call.size, dtype=np.int32)  # never written in place: shared by two fields
        row = sheet.at(call)
        return cls(
            call.astype(np.int32),
            t,
            sheet.model[row].astype(np.int8, copy=False),
            sheet.input_tokens[row],
            sheet.output_tokens[row],
            counts,
            counts,
            np.zeros(call.size, dtype=bool),
            t,
            np.zeros(call.size, dtype=np.int64),
            *(_rows_of(values, row) for values in sheet.carried()),
        )

    def take(self, mask: np.ndarray | slice) -> Pending:
        if isinstance(mask, np.ndarray) and mask.dtype == bool:
            if mask.all():
                return self  # arrays are never written in place, so sharing them is safe
            if not mask.any():
                mask = slice(0, 0)
        return Pending(
            *(getattr(self, name)[mask] for name in ATTEMPT_FIELDS),
            *(_rows_of(getattr(self, name), mask) for name in PRICED_FIELDS),
        )

    @staticmethod
    def join(parts: list[Pending]) -> Pending:
        filled = [part for part in parts if part.size] or parts[:1]
        if len(filled) == 1:
            return filled[0]
        return Pending(
            *(np.concatenate([getattr(p, name) for p in filled]) for name in ATTEMPT_FIELDS),
            *(_joined([getattr(p, name) for p in filled]) for name in PRICED_FIELDS),
        )

    @property
    def size(self) -> int:
        return int(self.call.size)


def _joined(columns: list[np.ndarray | None]) -> np.ndarray | None:
    """One column of several batches joined; a column the sheet lacks is None in every batch."""
    present = [values for values in columns if values is not None]
    if not present:
        return None
    assert len(present) == len(columns), "batches from sheets with different columns"
    return np.concatenate(present)


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
    """What the attempt loop needs to know about each call: row i is call i, or with `ids` (a streaming
    engine's sheet of the calls in play) the call ids[i]."""

    model: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    # Nano-dollars per token, per price row (sim/model/pricing.py): the model index, or with tiers by
    # prompt size, each call's own row in `price_row`.
    input_price: np.ndarray
    output_price: np.ndarray
    price_row: np.ndarray | None = None
    # The provider's prompt cache (sim/model/policies/prompt_cache.py): per call, input tokens read from
    # it and written to it, and their prices per price row. None: no prompt caching.
    cached_input: np.ndarray | None = None
    cache_write: np.ndarray | None = None
    cached_price: np.ndarray | None = None
    write_price: np.ndarray | None = None
    ids: np.ndarray | None = None  # ascending call ids of the rows; None: every call of the run, in order

    def at(self, call: np.ndarray) -> np.ndarray:
        """The sheet's rows of calls `call`."""
        return call if self.ids is None else positions(self.ids, call)

    def carried(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The per-call columns a Pending carries with each call: price row, prompt-cache read and write."""
        return self.price_row, self.cached_input, self.cache_write

    def prompt_cache_bill(
        self, batch: Pending, row: np.ndarray, billed_in: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Of the billed input, the tokens read from and written to the prompt cache, and what that saves
        (negative: costs more) against the plain input price. An attempt that bills no input reads none."""
        zeros = np.zeros(batch.size, dtype=np.int64)
        if batch.cached_input is None or batch.cache_write is None:
            return zeros, zeros, zeros
        assert self.cached_price is not None and self.write_price is not None
        read, wrote = batch.cached_input, batch.cache_write
        billed = billed_in > 0
        if not billed.all():
            read, wrote = np.where(billed, read, 0), np.where(billed, wrote, 0)
        # Per price row first (a few prices), then per attempt: one lookup each.
        saving = read * (self.input_price - self.cached_price)[row]
        saving += wrote * (self.input_price - self.write_price)[row]
        return read, wrote, saving


@dataclass(frozen=True, slots=True)
class Load:
    """Per attempt of a batch: its rate window (index in time) and the tokens it counts against it.

    Worked out once per batch: the check for contested windows and the round itself both read it.
    """

    window: np.ndarray
    tokens: np.ndarray

    @classmethod
    def of(cls, windows: RateWindows, batch: Pending) -> Load:
        return cls(
            windows.window_of(batch.t), np.add(batch.input_tokens, batch.output_tokens, dtype=np.int64)
        )

    def take(self, mask: np.ndarray) -> Load:
        return self if mask.all() else Load(self.window[mask], self.tokens[mask])


class RateWindows:
    """Admitted requests and tokens per (model, one-minute window), and which windows have closed.

    A window admits calls in time order while both its requests- and tokens-per-minute budgets hold;
    once it rejects one, it rejects every call until it resets (the reference plays the same rule).
    Counters are flat arrays indexed by group = model * windows + window.
    """

    def __init__(self, table: provider.ProviderTable, horizon_s: float) -> None:
        self.windows = int(horizon_s // retry.RATE_WINDOW_S) + 1
        size = table.rpm.size * self.windows
        self.requests = np.zeros(size, dtype=np.int64)
        self.tokens = np.zeros(size, dtype=np.int64)
        self.closed = np.zeros(size, dtype=bool)
        self.table = table

    def window_of(self, t: np.ndarray) -> np.ndarray:
        """The window index of each time (times past the horizon count in the last window)."""
        window = (t // retry.RATE_WINDOW_S).astype(np.int64)
        np.minimum(window, self.windows - 1, out=window)
        return window

    def group(self, window: np.ndarray, model: np.ndarray) -> np.ndarray:
        # int64 before multiplying: an int8 model times the window count would overflow.
        grouped: np.ndarray = model.astype(np.int64) * self.windows
        grouped += window
        return grouped

    def first_contested(self, window: np.ndarray, model: np.ndarray, tokens: np.ndarray) -> float:
        """Start of the earliest window these attempts would overflow (inf when all of them fit).

        One count per (model, window) over the span of windows the attempts touch (a day's, not the
        month's), all models at once.
        """
        low = int(window.min())
        span = int(window.max()) - low + 1
        models = self.table.rpm.size
        local = model * np.int64(span)  # a numpy int64 scalar: the product is int64, not int8
        local += window
        local -= low
        count = np.bincount(local, minlength=models * span).reshape(models, span)
        load = np.bincount(local, weights=tokens, minlength=models * span).reshape(models, span)
        part = np.s_[:, low : low + span]
        over = (count > 0) & (
            self.closed.reshape(models, -1)[part]
            | (self.requests.reshape(models, -1)[part] + count > self.table.rpm[:, None])
            | (self.tokens.reshape(models, -1)[part] + load > self.table.tpm[:, None])
        )
        overflowing = np.flatnonzero(over.any(axis=0))
        if not overflowing.size:
            return float("inf")
        return float(overflowing[0] + low) * retry.RATE_WINDOW_S

    def admit(
        self, batch: Pending, load: Load, fits_all: bool = False
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Which attempts get through (None: all of them), and each one's place in its window's order.

        Admitted ones are counted and a window that rejects one closes. Calls are served by time; calls
        due at the same instant (those queued for a window's start) in the order they were queued.
        `fits_all` says the caller checked (first_contested) that every window holds them all: then the
        order changes nothing and the sort is skipped.
        """
        t, model, tokens = batch.t, batch.model, load.tokens
        group = self.group(load.window, model)
        if fits_all:
            self._count(group, tokens)
            return None, np.zeros(t.size, dtype=np.int64)
        window_start = load.window * retry.RATE_WINDOW_S
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
    load: Load | None = None,
    queue: Holder | None = None,
) -> Pending:
    """Make one round of attempts, log them, and return the follow-ups they lead to.

    `load` is the batch's Load when the caller has it already; `queue` holds the calls a cost-aware policy
    queues (None: the policy queues nothing).
    """
    model = batch.model
    admitted, place = windows.admit(batch, load or Load.of(windows, batch), fits_all)
    outcome, duration, visible, billed_in, billed_out = _made(scenario, table, key, batch, admitted)
    jitter = np.zeros(batch.size)
    if retry.uses_jitter(scenario.retry):
        unanswered = (
            (outcome == Outcome.RATE_LIMITED) | (outcome == Outcome.ERROR) | (outcome == Outcome.TIMEOUT)
        )
        jitter[unanswered] = hashed_uniform(
            key, batch.call[unanswered], batch.attempt_no[unanswered], Draw.JITTER
        )
    plan = retry.follow_up(scenario.retry, outcome, batch.t, duration, batch.retries_used, jitter)
    if queue is not None:
        plan = queue.hold(plan, batch)
    row = model if batch.price_row is None else batch.price_row  # the attempt's price row
    billed_cached, billed_write, saving = sheet.prompt_cache_bill(batch, row, billed_in)
    cost = billed_in * sheet.input_price[row]
    cost += billed_out * sheet.output_price[row]
    cost -= saving
    log.add(
        call=batch.call,
        t=batch.t,
        model=model,  # small codes kept small: the log holds every attempt of the run
        outcome=outcome.astype(np.int8),  # Outcome
        action=plan.action,  # Action, int8
        billed_input=billed_in,
        billed_output=billed_out,
        billed_cached=billed_cached,
        billed_write=billed_write,
        cost_nanos=cost,
        visible_at=batch.t + visible,
        finished_at=batch.t + duration,
    )
    return _follow_ups(batch, plan, place)


def _made(
    scenario: Scenario,
    table: provider.ProviderTable,
    key: int,
    batch: Pending,
    admitted: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Outcome, duration, first-visible offset and billed tokens of every attempt of the round.

    `admitted` None: all were admitted, and the provider's arrays are the round's (no masks, no copies).
    A rejected attempt is rate limited: a quick reply, nothing visible, nothing billed.
    """
    if admitted is None:
        made = provider.attempt(
            scenario,
            table,
            key,
            batch.call,
            batch.attempt_no,
            batch.regenerated,
            batch.model,
            batch.input_tokens,
            batch.output_tokens,
        )
        return made.outcome, made.duration_s, made.first_visible_s, made.billed_input, made.billed_output
    outcome = np.full(batch.size, Outcome.RATE_LIMITED, dtype=np.int64)
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
            batch.model[admitted],
            batch.input_tokens[admitted],
            batch.output_tokens[admitted],
        )
        outcome[admitted], duration[admitted], visible[admitted] = (
            made.outcome,
            made.duration_s,
            made.first_visible_s,
        )
        billed_in[admitted], billed_out[admitted] = made.billed_input, made.billed_output
    return outcome, duration, visible, billed_in, billed_out


def _follow_ups(batch: Pending, plan: retry.FollowUp, place: np.ndarray) -> Pending:
    """The next attempt of every call whose attempt this round asked for one."""
    action = plan.action
    again = np.flatnonzero(
        (action == Action.RETRY) | (action == Action.QUEUE) | (action == Action.REGENERATE)
    )
    next_action = action[again]
    return Pending(
        call=batch.call[again],
        t=plan.next_t[again],
        model=batch.model[again],
        input_tokens=batch.input_tokens[again],
        output_tokens=batch.output_tokens[again],
        attempt_no=batch.attempt_no[again] + 1,
        retries_used=batch.retries_used[again] + (next_action == Action.RETRY),
        regenerated=batch.regenerated[again] | (next_action == Action.REGENERATE),
        previous_t=batch.t[again],
        previous_rank=place[again],
        price_row=_rows_of(batch.price_row, again),
        cached_input=_rows_of(batch.cached_input, again),
        cache_write=_rows_of(batch.cache_write, again),
    )


def _rows_of(values: np.ndarray | None, rows: np.ndarray | slice) -> np.ndarray | None:
    return None if values is None else values[rows]
