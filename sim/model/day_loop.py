"""The streaming engine's day loop: a run played a day at a time, its state carried from day to day.

(A part of several days may be played at once -- opened together, its ticks folded once -- when the
streaming engine judges it small enough: sim/io/streaming_run.py. "Day" below means either.)

`engine.simulate` holds the month: every request, call and attempt. The streaming engine
(sim/io/streaming_run.py) draws the traffic a block of users at a time, spills it by day and hands the
days, in order, to a `DayLoop`, which plays each with the state the day before left:

- what opening a day reads (sim/model/day_opening.py `DayOpener`): the response cache layers' LRU stacks
  (sim/model/day_caches.py) and the provider prompt caches' prefixes -- opening never reads the clock,
  so the next day may be opened while this one plays (`play_opened`);
- the attempt clock: rate windows, the client queue, follow-ups in flight, first attempts not yet due
  (sim/model/attempt_clock.py), reading a sheet of the calls still in play;
- the requests not yet finished, with what their figures need (sim/model/request_fold.py);
- the run's figures: per-user spend per period, counts and sums, TTFTs (sim/model/run_figures.py).

The figures are those `forecast.summarize(engine.simulate(...))` gives, to the byte (tests hold the two
together). A day's work runs through the whole-run engine's own functions (router, calls needing a model,
chain offsets, quality), so no rule has a second copy.

A per-user cap decides over a user's whole month (sim/model/caps.py), so with one the finished requests
and attempts are not folded as they come: they go to a `CapPass` (sim/model/cap_pass.py), which keeps
them by block of users and, after the last day, caps and folds them a block at a time (`finish_cap`).

Given a `usage` sink (`--out`), each day's ticks hand out their usage rows (sim/model/usage_chunk.py): its
attempts, and the cache answers and cached fragment calls of the requests it finished -- the whole run's
rows, a day at a time; with a cap the cap pass hands them out instead, a block of users at a time. (Each
open request then carries 4 bytes more: its count of cached fragment calls.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from budget.domain.prices import PriceCatalog
from sim.model.attempt_clock import AttemptClock
from sim.model.attempts import AttemptLog, CallSheet
from sim.model.cap_pass import CapPass
from sim.model.day_opening import DayOpener, OpenedDay
from sim.model.engine import quality_scores
from sim.model.policies import provider
from sim.model.pricing import PriceSheet
from sim.model.request_fold import Finished, RequestFold
from sim.model.run_figures import ATTEMPT_COLUMNS, RequestChunk, RunFigures, ValueStore
from sim.model.scenario import Scenario
from sim.model.traffic_blocks import DayTraffic
from sim.model.usage_chunk import USAGE_ATTEMPT_COLUMNS, UsageChunk, of_requests


@dataclass(slots=True)
class _Sheet:
    """The calls in play and what the clock reads of them, ascending by call id."""

    ids: np.ndarray
    columns: dict[str, np.ndarray]


class DayLoop:
    """Plays one day after another (`play`, then `play(None)` while `busy`); holds what carries from day
    to day; `figures` are the run's so far."""

    def __init__(
        self,
        scenario: Scenario,
        catalog: PriceCatalog,
        mau: int,
        days: int,
        key: int,
        ttft_store: ValueStore | None,
        sessions: int,
        cap_pass: CapPass | None = None,
        usage: Callable[[UsageChunk], object] | None = None,
    ) -> None:
        """`cap_pass`: with the scenario's cap, where finished requests and attempts go until `finish_cap`.
        `usage`: hears the run's usage rows, a tick's attempts and the requests it finished at a time (with
        a cap the cap pass hands them out instead, after the cap: give it the same sink)."""
        self.scenario, self.mau, self.days = scenario, mau, days
        self.cap_pass = cap_pass
        self.usage = usage
        self.table = provider.ProviderTable.of(scenario)
        self.prices = PriceSheet.of(catalog, scenario.models)
        self.opener = DayOpener(
            scenario, self.table, self.prices, mau, days, capped=cap_pass is not None, usage=usage is not None
        )
        self.in_play = _Sheet(np.zeros(0, dtype=np.int64), {})
        self.clock = AttemptClock(scenario, self.table, self._sheet_of(self.in_play), key, days)
        self.fold = RequestFold()
        self.figures = RunFigures(
            scenario, scenario.models, mau, days, sessions, cap_pass is not None, ttft_store=ttft_store
        )

    @property
    def busy(self) -> bool:
        """Are attempts still to be made (retries, queued calls, calls not yet due)?"""
        return self.clock.busy

    def play(self, day: DayTraffic | None, ticks: int = 1, last: bool = False) -> None:
        """Open the day's requests and their calls (a part of `ticks` days: its first day's), play `ticks`
        ticks of the clock, fold what finished. (One fold for the part's ticks: a fold's work grows with
        the requests open, which are the part's.) `last`: no later day brings requests (the cache layers
        then carry nothing on)."""
        opened = None
        if day is not None and day.requests["request"].size:
            opened = self.opener.open(day, last)
        self.play_opened(opened, ticks)

    def play_opened(self, day: OpenedDay | None, ticks: int = 1) -> None:
        """`play` of a day `opener` has already opened (in order: the next day may be opened while this
        one plays, since opening reads nothing playing changes)."""
        if day is not None and day.request.size:
            self._open(day)
        log = self.clock.run_until(self.clock.tick + ticks)
        hand_out = self.usage is not None and self.cap_pass is None
        attempt_user = self._attempt_users(log) if hand_out else None
        if self.cap_pass is None:
            self.figures.add_attempts({name: log.column(name) for name in ATTEMPT_COLUMNS})
        else:
            self.cap_pass.add_attempts(self.fold, log)
        finished = self.fold.fold(log)
        self._finish(finished)
        if self.usage is not None and attempt_user is not None:
            self.usage(_usage(self.scenario.models, attempt_user, log, finished))
        self._forget_finished_calls()

    def _attempt_users(self, log: AttemptLog) -> np.ndarray:
        """The user of each attempt's request (read before the fold forgets the calls it finishes)."""
        call = np.asarray(log.column("call"), dtype=np.int64)
        if not call.size:
            return np.zeros(0, dtype=np.int64)
        return self.fold.carried_of(self.fold.requests_of(call), "user")

    def finish_cap(self) -> None:
        """With a cap, once no longer `busy`: cap every block of users and fold it into `figures`."""
        if self.cap_pass is not None:
            self.cap_pass.fold_into(self.figures)

    def _open(self, day: OpenedDay) -> None:
        """Put an opened day's calls on the sheet and the clock, and its requests in the fold."""
        self._extend_sheet(day.call, day.sheet)
        self.clock.add(day.call, day.starts)
        self.fold.open(
            day.request,
            day.t,
            day.exact,
            day.semantic.true_hit,
            day.semantic.false_hit,
            day.call,
            day.call_request,
            carry=day.carry,
        )

    def _extend_sheet(self, call_ids: np.ndarray, new: dict[str, np.ndarray]) -> None:
        """Add calls to a model, with their sheet columns, to the sheet of calls in play."""
        ids = np.concatenate([self.in_play.ids, call_ids])
        order = np.argsort(ids, kind="stable")
        columns = {
            name: np.concatenate([self.in_play.columns.get(name, values[:0]), values])[order]
            for name, values in new.items()
        }
        self.in_play = _Sheet(ids[order], columns)
        self.clock.use_sheet(self._sheet_of(self.in_play))

    def _forget_finished_calls(self) -> None:
        """Keep only the calls of requests still open (a finished request's calls have no attempt left)."""
        keep = np.isin(self.in_play.ids, self.fold.call, assume_unique=True)
        if keep.all():
            return
        self.in_play = _Sheet(self.in_play.ids[keep], {n: v[keep] for n, v in self.in_play.columns.items()})
        self.clock.use_sheet(self._sheet_of(self.in_play))

    def _sheet_of(self, in_play: _Sheet) -> CallSheet:
        empty = np.zeros(0, dtype=np.int64)
        columns = in_play.columns
        return CallSheet(
            model=columns.get("model", empty.astype(np.int8)),
            input_tokens=columns.get("input_tokens", empty),
            output_tokens=columns.get("output_tokens", empty),
            input_price=self.prices.input,
            output_price=self.prices.output,
            price_row=columns.get("price_row"),
            **self._prompt_prices(columns),
            ids=in_play.ids,
        )

    def _prompt_prices(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
        """The sheet's prompt-cache columns and prices, when the calls carry prompt-cache tokens."""
        if "cached_input" not in columns:
            return {}
        return {
            "cached_input": columns["cached_input"],
            "cache_write": columns["cache_write"],
            "cached_price": self.prices.cached_input,
            "write_price": self.prices.cache_write,
        }

    def _finish(self, finished: Finished) -> None:
        """Fold the finished requests into the run's figures."""
        if not finished.request.size:
            return
        carried, outcomes = finished.carried, finished.outcomes
        quality = quality_scores(
            self.scenario, carried["request_model"], carried["hard"], outcomes.served, outcomes.bad_served
        )
        if self.cap_pass is not None:
            self.cap_pass.add_requests(finished, quality)
            return
        self.figures.add_requests(
            RequestChunk(
                t=finished.t,
                user=carried["user"],
                context=carried["context"],
                served=outcomes.served,
                fragment_hit=carried["fragment_hit"],
                cost_nanos=outcomes.cost,
                quality=quality,
                ttft_s=outcomes.ttft,
                fallback=outcomes.fallback,
            )
        )


def _usage(
    models: tuple[str, ...], attempt_user: np.ndarray, log: AttemptLog, finished: Finished
) -> UsageChunk:
    """A tick's usage rows: its attempts, and the cache answers and fragment hits of what it finished."""
    n = attempt_user.size
    attempts = {
        name: log.column(name) if n else np.zeros(0, dtype=np.int64) for name in USAGE_ATTEMPT_COLUMNS
    }
    carried = finished.carried
    if not finished.request.size:
        return of_requests(models, attempt_user, attempts, *(np.zeros(0, dtype=np.int64),) * 5)
    return of_requests(
        models,
        attempt_user,
        attempts,
        carried["user"],
        finished.t,
        carried["request_model"],
        finished.outcomes.served,
        carried["fragment_calls"],
    )
