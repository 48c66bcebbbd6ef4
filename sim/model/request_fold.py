"""Attempts folded into requests: who served each request, when its first token showed, what it cost.

One set of rules, two ways to use them. The whole-run engine (sim/model/engine.py `_per_request`) folds
the run's whole AttemptLog at once into arrays over every request. A streaming engine folds each tick's
log as it comes (`RequestFold`) and gets each request's figures once the request is finished, holding only
the open ones. Every per-request figure is an order-free reduction of its calls' attempts -- a flag set by
any attempt, a maximum, an integer sum -- so folding in pieces gives the very same values.

When a request is finished: every call of it that goes to a model has logged its terminal attempt --
an action other than RETRY, QUEUE or REGENERATE (DONE, FAILED, or GIVE_UP, which the client queue writes
over a QUEUE in the same tick that logged it, sim/model/queue.py) -- so none can have another attempt.
Each call has exactly one terminal attempt; a request is opened with the count of its calls, and each
terminal attempt counts one down. A request with no call to a model (answered by a cache) is finished at
once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.errors import ArgumentError
from sim.model.attempts import AttemptLog
from sim.model.codes import Action, Outcome, Served
from sim.model.sorted_search import positions

EXACT_HIT_S, SEMANTIC_HIT_S = 0.01, 0.06  # time to answer from the cache layers

# Time to first token of a request not answered by the model, by its `served` code (NaN: it failed).
_TTFT_WITHOUT_MODEL = {
    Served.FAILED: np.nan,
    Served.EXACT: EXACT_HIT_S,
    Served.SEMANTIC: SEMANTIC_HIT_S,
    Served.FALSE_HIT: SEMANTIC_HIT_S,
}
_AGAIN = (Action.RETRY, Action.QUEUE, Action.REGENERATE)


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Per request: served (a Served code), ttft_s, fallback shown, cost in nano-dollars, bad_served."""

    served: np.ndarray  # int64
    ttft: np.ndarray  # float64; -inf for a request served by the model without a finished call
    fallback: np.ndarray  # bool
    cost: np.ndarray  # int64
    bad_served: np.ndarray  # bool

    @classmethod
    def empty(cls, n: int) -> Outcomes:
        """Accumulators for n requests before any attempt."""
        return cls(
            np.full(n, Served.MODEL, dtype=np.int64),
            np.full(n, -np.inf),  # the latest first-visible time of the request's finished calls
            np.zeros(n, dtype=bool),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=bool),
        )

    def take(self, rows: np.ndarray) -> Outcomes:
        return Outcomes(
            self.served[rows], self.ttft[rows], self.fallback[rows], self.cost[rows], self.bad_served[rows]
        )

    def join(self, other: Outcomes) -> Outcomes:
        return Outcomes(
            *(np.concatenate([getattr(self, name), getattr(other, name)]) for name in _OUTCOME_FIELDS)
        )


_OUTCOME_FIELDS = ("served", "ttft", "fallback", "cost", "bad_served")


def accumulate(tally: Outcomes, request: np.ndarray, log: AttemptLog) -> None:
    """Fold a log's attempts into the tally, in place; `request` is each attempt's row in the tally."""
    action = log.column("action")
    tally.served[request[(action == Action.FAILED) | (action == Action.GIVE_UP)]] = Served.FAILED
    done = np.flatnonzero(action == Action.DONE)
    np.maximum.at(tally.ttft, request[done], log.column("visible_at")[done])
    tally.fallback[request[(action == Action.QUEUE) | (action == Action.GIVE_UP)]] = True
    np.add.at(tally.cost, request, np.asarray(log.column("cost_nanos"), dtype=np.int64))  # int64, or empty
    tally.bad_served[request[done[log.column("outcome")[done] == Outcome.BAD_SERVED]]] = True


def finish(
    tally: Outcomes, t: np.ndarray, exact: np.ndarray, true_hit: np.ndarray, false_hit: np.ndarray
) -> Outcomes:
    """The finished requests' figures from their tally (changed in place) and the cache layers' answers:
    a cache's answer overrides a failure, and time to first token is counted from the request's arrival."""
    served, ttft = tally.served, tally.ttft
    served[false_hit] = Served.FALSE_HIT
    served[true_hit] = Served.SEMANTIC
    served[exact] = Served.EXACT
    ttft -= t
    for code, seconds in _TTFT_WITHOUT_MODEL.items():  # a mask per code: no temporary the size of all
        ttft[served == code] = seconds
    tally.bad_served[:] &= served == Served.MODEL  # a bad summary does not spoil an answer a cache gave
    return tally


@dataclass(frozen=True, slots=True)
class Finished:
    """Requests finished by a fold, in ascending id order, and their figures."""

    request: np.ndarray  # int64 request ids
    t: np.ndarray  # their arrival times
    outcomes: Outcomes
    carried: dict[str, np.ndarray]  # the columns `RequestFold.open` was given to carry, of these requests


class RequestFold:
    """Requests opened as they become known, folded a log at a time, handed out once finished.

    Carried state: per open request 53 bytes (id, arrival, cache answers, tally, calls left), per open
    call 16 bytes (call id, request id). Open: a request with a call not yet at its terminal attempt --
    fed a day at a time, the day's requests still in play plus those with calls pushed past midnight or
    retries and queued calls in flight (`nbytes`).
    """

    def __init__(self) -> None:
        self.request = np.zeros(0, dtype=np.int64)
        self.t = np.zeros(0)
        self.exact = np.zeros(0, dtype=bool)
        self.true_hit = np.zeros(0, dtype=bool)
        self.false_hit = np.zeros(0, dtype=bool)
        self.tally = Outcomes.empty(0)
        self.calls_left = np.zeros(0, dtype=np.int64)
        self.call = np.zeros(0, dtype=np.int64)  # open calls, ascending, and each one's request id
        self.call_request = np.zeros(0, dtype=np.int64)
        self.carried: dict[str, np.ndarray] = {}

    def open(
        self,
        request: np.ndarray,
        t: np.ndarray,
        exact: np.ndarray,
        true_hit: np.ndarray,
        false_hit: np.ndarray,
        call: np.ndarray,
        call_request: np.ndarray,
        carry: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Open requests (ids not opened before) with their arrival times and cache answers, and their
        calls that go to a model (`call`, with each one's request id in `call_request`). `carry`: columns
        (one value per request) handed back with each request when it finishes -- the same names at
        every open."""
        if call.size != call_request.size:
            raise ArgumentError("call_request", f"has {call_request.size} requests for {call.size} calls")
        request = np.asarray(request, dtype=np.int64)
        requests = np.concatenate([self.request, request])
        order = _ascending_order(requests)
        self.request = _in_order(requests, order)
        self.t = _in_order(np.concatenate([self.t, t]), order)
        self.exact = _in_order(np.concatenate([self.exact, exact]), order)
        self.true_hit = _in_order(np.concatenate([self.true_hit, true_hit]), order)
        self.false_hit = _in_order(np.concatenate([self.false_hit, false_hit]), order)
        tally = self.tally.join(Outcomes.empty(request.size))
        self.tally = tally if order is None else tally.take(order)
        for name, values in (carry or {}).items():
            self.carried[name] = _in_order(
                np.concatenate([self.carried.get(name, values[:0]), values]), order
            )
        calls_left = np.concatenate([self.calls_left, np.zeros(request.size, dtype=np.int64)])
        self.calls_left = _in_order(calls_left, order)
        rows = _positions(self.request, np.asarray(call_request, dtype=np.int64), "call_request")
        self.calls_left += np.bincount(rows, minlength=self.calls_left.size)  # np.add.at is slower
        calls = np.concatenate([self.call, np.asarray(call, dtype=np.int64)])
        by_call = _ascending_order(calls)
        self.call = _in_order(calls, by_call)
        self.call_request = _in_order(np.concatenate([self.call_request, call_request]), by_call)

    def fold(self, log: AttemptLog) -> Finished:
        """Fold a log (of the next ticks played) in; hand out the requests it finished, and any opened
        without a call to a model."""
        call = np.asarray(log.column("call"), dtype=np.int64)
        at = _positions(self.call, call, "log")
        rows = _positions(self.request, self.call_request[at], "log")
        accumulate(self.tally, rows, log)
        terminal = ~np.isin(log.column("action"), _AGAIN)
        self.calls_left -= np.bincount(rows[terminal], minlength=self.calls_left.size)
        keep_call = np.ones(self.call.size, dtype=bool)
        keep_call[at[terminal]] = False
        self.call, self.call_request = self.call[keep_call], self.call_request[keep_call]
        done = self.calls_left == 0
        finished = Finished(
            self.request[done],
            self.t[done],
            finish(
                self.tally.take(done),
                self.t[done],
                self.exact[done],
                self.true_hit[done],
                self.false_hit[done],
            ),
            {name: values[done] for name, values in self.carried.items()},
        )
        keep = ~done
        self.request, self.t, self.calls_left = self.request[keep], self.t[keep], self.calls_left[keep]
        self.exact, self.true_hit, self.false_hit = (
            self.exact[keep],
            self.true_hit[keep],
            self.false_hit[keep],
        )
        self.tally = self.tally.take(keep)
        self.carried = {name: values[keep] for name, values in self.carried.items()}
        return finished

    def requests_of(self, call: np.ndarray) -> np.ndarray:
        """The request id of each of some open calls (before `fold` reads the log that finishes them)."""
        request: np.ndarray = self.call_request[_positions(self.call, np.asarray(call, np.int64), "call")]
        return request

    def carried_of(self, request: np.ndarray, name: str) -> np.ndarray:
        """The carried column `name` of some open requests (ids)."""
        values: np.ndarray = self.carried[name][_positions(self.request, request, "request")]
        return values

    @property
    def open_requests(self) -> int:
        return int(self.request.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the carried state."""
        arrays = (self.request, self.t, self.exact, self.true_hit, self.false_hit, self.calls_left)
        arrays += tuple(getattr(self.tally, name) for name in _OUTCOME_FIELDS)
        arrays += tuple(self.carried.values())
        return sum(a.nbytes for a in arrays) + self.call.nbytes + self.call_request.nbytes


def _ascending_order(ids: np.ndarray) -> np.ndarray | None:
    """The stable order that sorts `ids`; None when they already ascend (as when the first opening is a
    part of the run, or its ids follow the open ones): then nothing need be gathered."""
    if bool(np.all(ids[1:] > ids[:-1])):
        return None
    return np.argsort(ids, kind="stable")


def _in_order(values: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    return values if order is None else values[order]


def _positions(ascending: np.ndarray, values: np.ndarray, what: str) -> np.ndarray:
    """Where each value is in an ascending array of ids; every value must be there."""
    at = positions(ascending, values)
    if values.size and (
        not ascending.size
        or np.any(at >= ascending.size)
        or np.any(ascending[np.minimum(at, ascending.size - 1)] != values)
    ):
        raise ArgumentError(what, "names a call or request that is not open")
    return at
