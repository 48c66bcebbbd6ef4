"""Caps in the forecast: a scenario's per-user monthly cap, applied with the enforcer's own ledger.

Every request that needs a model call authorizes its worst case with `budget.ledger.Ledger` before its
calls and settles with what its attempts billed; a denied request is not sent (it scores
`quality.denied`), a degraded one is answered by `cap.degrade_model`. The decisions are the real
ledger's, made in time order per user, with reservations held while requests are in flight.

Exact and fast: the ledger can only refuse a request when the user's settled spend plus the worst cases
in flight would pass the cap. Settled spend never exceeds the user's uncapped total, so a user whose
uncapped total plus the largest sum of worst cases ever in flight at once stays within the cap is
granted everything -- the ledger would change nothing, and only the other users are replayed through
it. (A plain "under the soft limit" test is not enough: one large worst case can overflow the headroom
above it.) The same reasoning skips the opening stretch of a replayed user's month: until the first
request that might not fit, everything is granted, so the ledger takes that stretch as one settled usage
per model and decides the rest request by request. Tests hold both shortcuts to a full replay.

The cap is per month, as the enforcer's: each period of the run (sim/model/periods.py) is replayed
through a ledger of its own, so a user's spend starts again from zero at each month's start, and a
partial month (a run ending inside it) gets the whole cap -- the run stops early, the cap does not
shrink. A request counts in the period it starts in. Stated simplifications: a degraded request keeps
its attempts (outcomes and tokens), repriced at the cheaper model and scored at that model's quality; a
denied request's calls are removed, but the rate windows and caches are not replayed without them (the
capacity a cap frees is not given to other requests, and a cache entry its miss stored still serves
later requests).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum

import numpy as np

from budget.domain.config import EnforcerConfig, Plan, usd_to_nanos
from budget.domain.events import ReservationDenied, ReservationGranted, UsageRecorded
from budget.domain.ledger import Authorize, Ledger, RecordUsage
from budget.domain.prices import PriceCatalog
from sim.model.attempts import AttemptLog
from sim.model.cap_shape import RequestOutcomes, shape
from sim.model.codes import CACHE_ANSWERS, CapDecision
from sim.model.periods import period_index, run_periods
from sim.model.policies import retry
from sim.model.run import CapEffect, RunResult, calls_needing_model
from sim.model.scenario import Cap, Scenario

# The ledger folds spend by calendar month; each period is replayed in a ledger of its own whose clock
# starts here. A 31-day month keeps a whole period (at most 31 days) in one ledger month; only requests
# of a 31-day last period that end a session after the run's end could spill past it.
LEDGER_MONTH_START = datetime(2026, 1, 1, tzinfo=UTC)
# Reservations settle when their request finishes; a TTL of a day never expires one early.
RESERVATION_TTL_S = 86_400


class _Step(IntEnum):
    """What the ledger does at one point of a user's stream; at one instant, settlements come first (the
    stream is sorted by these values)."""

    SETTLE = 0  # a request finished: record what its attempts billed against its reservation
    AUTHORIZE = 1  # a request starts: reserve its worst case


def enforcer_config(cap: Cap, cap_nanos: int) -> EnforcerConfig:
    """The enforcer's config for a scenario's cap (one plan for every user)."""
    return EnforcerConfig(
        default_plan=Plan(
            name="forecast",
            cap_nanos=cap_nanos,
            at_cap=cap.action,
            degrade_model=cap.degrade_model,
            soft_threshold_pct=max(1, round(cap.soft_threshold * 100)),
        ),
        reservation_ttl_s=RESERVATION_TTL_S,
        source="scenario [cap]",
    )


def monthly_cap_nanos(cap: Cap) -> int:
    """The cap of every period, whole or partial, in whole nano-dollars (rounded down)."""
    # A scenario's cap is a float: rounded down to whole nano-dollars, where an admin's must be exact.
    return usd_to_nanos(str(cap.monthly_usd), "scenario", "cap.monthly_usd", exact=False)


def apply_cap(run: RunResult, catalog: PriceCatalog, replay_all: bool = False) -> RunResult:
    """The run as the scenario's cap would have shaped it. `replay_all` sends every user and every
    request through the ledger one by one (for tests: the result must be the same)."""
    scenario = run.scenario
    if scenario.cap is None:
        return run
    requests = CapRequests.of_run(run, catalog)
    decision, cost, replayed = cap_decisions(requests, catalog, replay_all)
    return _shaped(run, catalog, requests, decision, cost, monthly_cap_nanos(scenario.cap), replayed)


def cap_decisions(
    requests: CapRequests, catalog: PriceCatalog, replay_all: bool = False
) -> tuple[np.ndarray, np.ndarray, int]:
    """Each request's CapDecision and capped cost, and how many user-months went through the ledger.

    `requests` may be a whole run's or those of any set of whole users (a block of users of a streaming
    run): users do not meet in the ledger, so the decisions are the same either way.
    """
    cap = requests.scenario.cap
    assert cap is not None
    cap_nanos = monthly_cap_nanos(cap)
    config = enforcer_config(cap, cap_nanos)
    periods = run_periods(requests.scenario.traffic.start, requests.days)
    period = period_index(periods, requests.t)
    decision = np.full(requests.t.size, CapDecision.ALLOWED, dtype=np.int64)
    cost = requests.cost_nanos.copy()
    replayed = 0
    for each in periods:
        in_period = period == each.index
        if replay_all:
            replay = np.unique(requests.user[requests.has_call & in_period])
        else:
            replay = _users_who_may_meet_the_cap(requests, cap_nanos, in_period)
        month = _Month(in_period, each.start_s, Ledger(config, catalog))
        _replay(requests, month, replay, decision, cost, skip_prefix=not replay_all)
        replayed += int(replay.size)
    return decision, cost, replayed


@dataclass(frozen=True, slots=True)
class _Month:
    """One period's replay: its requests, where its clock starts in the run, and its own ledger."""

    requests: np.ndarray  # bool per request: it starts in this period
    start_s: float
    ledger: Ledger

    def now(self, seconds: float) -> datetime:
        """The ledger's clock at `seconds` since the run's start."""
        return LEDGER_MONTH_START + timedelta(seconds=seconds - self.start_s)


def token_bounds(
    scenario: Scenario, owner: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per request (0..n-1): whether it has a call to a model, and the most input and output tokens its
    calls can bill -- `owner` is each such call's request, with its tokens."""
    # A call bills at most every token on each attempt: the first, every retry the policy allows,
    # and one regeneration of a bad completion. That bound is the worst case an app reserves.
    attempts = retry.retry_limit(scenario.retry) + 2
    return (
        np.bincount(owner, minlength=n) > 0,
        sum_by(owner, input_tokens, n) * attempts,
        sum_by(owner, output_tokens, n) * attempts,
    )


@dataclass(frozen=True, slots=True)
class CapRequests:
    """What the cap's ledger reads of some requests (a whole run's, or a block of whole users'), one value
    per request, requests in ascending id order: its model calls' worst case, what its attempts billed,
    and when it finished."""

    scenario: Scenario
    models: tuple[str, ...]
    days: int
    request_id: np.ndarray  # the run's request ids (the ledger's request and event ids)
    t: np.ndarray
    user: np.ndarray  # 0..users-1: the run's user id less `first_user`
    first_user: int
    users: int
    request_model: np.ndarray
    cost_nanos: np.ndarray  # without the cap
    has_call: np.ndarray
    max_input: np.ndarray
    max_output: np.ndarray
    worst_nanos: np.ndarray
    billed_input: np.ndarray
    billed_output: np.ndarray
    finished: np.ndarray
    attempt_request: np.ndarray  # per attempt row: its request's row here

    @classmethod
    def of_run(cls, run: RunResult, catalog: PriceCatalog) -> CapRequests:
        """A whole run's requests."""
        traffic, log = run.traffic, run.attempts
        n = traffic.requests
        cached = np.isin(run.served, CACHE_ANSWERS)
        needed = calls_needing_model(traffic, cached, run.fragment_hit)
        has_call, max_input, max_output = token_bounds(
            run.scenario,
            traffic.call_request[needed],
            traffic.input_tokens[needed],
            traffic.output_tokens[needed],
            n,
        )
        return cls.of(
            run.scenario,
            run.models,
            catalog,
            traffic.days,
            request_id=np.arange(n, dtype=np.int64),
            t=traffic.t,
            user=traffic.user,
            users=traffic.mau,
            request_model=run.request_model,
            cost_nanos=run.cost_nanos,
            bounds=(has_call, max_input, max_output),
            attempt_request=traffic.call_request[log.column("call").astype(np.int64)],
            attempts=log,
        )

    @classmethod
    def of(
        cls,
        scenario: Scenario,
        models: tuple[str, ...],
        catalog: PriceCatalog,
        days: int,
        *,
        request_id: np.ndarray,
        t: np.ndarray,
        user: np.ndarray,
        users: int,
        request_model: np.ndarray,
        cost_nanos: np.ndarray,
        bounds: tuple[np.ndarray, np.ndarray, np.ndarray],
        attempt_request: np.ndarray,
        attempts: AttemptLog | dict[str, np.ndarray],
        first_user: int = 0,
    ) -> CapRequests:
        """From per-request arrays, `bounds` as `token_bounds` gives them, and the requests' attempt rows
        (`attempt_request`: each row's request here; `attempts`: their billed_input, billed_output and
        finished_at)."""
        has_call, max_input, max_output = bounds
        n = t.size
        prices = [catalog[model] for model in models]
        per_input = np.array([max(p.input, p.cached_input, p.cache_write) for p in prices], dtype=np.int64)
        per_output = np.array([p.output for p in prices], dtype=np.int64)
        worst = max_input * per_input[request_model] + max_output * per_output[request_model]
        column = attempts.column if isinstance(attempts, AttemptLog) else attempts.__getitem__
        finished = t.copy()
        np.maximum.at(finished, attempt_request, column("finished_at"))
        return cls(
            scenario=scenario,
            models=models,
            days=days,
            request_id=request_id,
            t=t,
            user=user,
            first_user=first_user,
            users=users,
            request_model=request_model,
            cost_nanos=cost_nanos,
            has_call=has_call,
            max_input=max_input,
            max_output=max_output,
            worst_nanos=worst,
            billed_input=sum_by(attempt_request, column("billed_input").astype(np.int64), n),
            billed_output=sum_by(attempt_request, column("billed_output").astype(np.int64), n),
            finished=finished,
            attempt_request=attempt_request,
        )


def sum_by(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Int64 totals of `values` per `index` in 0..n-1 (e.g. nano-dollars per user)."""
    total = np.zeros(n, dtype=np.int64)
    np.add.at(total, index, values.astype(np.int64))
    return total


def _users_who_may_meet_the_cap(requests: CapRequests, cap_nanos: int, in_period: np.ndarray) -> np.ndarray:
    """Users whose uncapped spend in the period plus the most they ever have reserved at once in it could
    pass the cap."""
    spent = sum_by(requests.user[in_period], requests.cost_nanos[in_period], requests.users)
    rows = np.flatnonzero(requests.has_call & in_period)
    if not rows.size:  # no call to a model in the period (a small block of users may have none)
        return np.flatnonzero(spent > cap_nanos)
    user = np.concatenate([requests.user[rows], requests.user[rows]])
    time = np.concatenate([requests.t[rows], requests.finished[rows]])
    delta = np.concatenate([requests.worst_nanos[rows], -requests.worst_nanos[rows]])
    order = np.lexsort((-delta, time, user))  # at equal times, count a reservation before a release
    user, delta = user[order], delta[order]
    first = np.r_[True, user[1:] != user[:-1]]
    running = _cumsum_by_group(delta, first)  # reserved at once, per user
    peak = np.zeros(requests.users, dtype=np.int64)
    np.maximum.at(peak, user, running)
    return np.flatnonzero(spent + peak > cap_nanos)


def _group_base(before: np.ndarray, first: np.ndarray) -> np.ndarray:
    """For each position, the running total just before its group started."""
    start = np.maximum.accumulate(np.where(first, np.arange(first.size), 0))
    based: np.ndarray = before[start]
    return based


def _replay(
    requests: CapRequests,
    month: _Month,
    users: np.ndarray,
    decision: np.ndarray,
    cost: np.ndarray,
    skip_prefix: bool = True,
) -> None:
    """Authorize and settle the period's requests of `users` through its ledger, in time order per user,
    writing each request's decision and cost into `decision` and `cost`.

    With `skip_prefix`, each user's opening stretch in which the ledger provably grants everything (up to
    the last moment with nothing reserved before the first request that might not fit) goes to the ledger
    as one settled usage per model instead of request by request: its spend is the same, exactly.
    """
    ledger = month.ledger
    rows = np.flatnonzero(requests.has_call & month.requests & np.isin(requests.user, users))
    # One stream of (user, time, kind, request), kind a _Step: at one instant, settlements sort first.
    user = np.concatenate([requests.user[rows], requests.user[rows]])
    time = np.concatenate([requests.finished[rows], requests.t[rows]])
    kind = np.repeat(np.array([_Step.SETTLE, _Step.AUTHORIZE], dtype=np.int64), rows.size)
    request = np.concatenate([rows, rows])
    order = np.lexsort((request, kind, time, user))
    user, time, kind, request = user[order], time[order], kind[order], request[order]
    name = requests.scenario.name
    if skip_prefix and request.size:
        prefix = _granted_prefix(
            user, kind, request, requests.worst_nanos, requests.cost_nanos, ledger.config
        )
        _settle_prefix(month, requests, user[prefix], time[prefix], kind[prefix], request[prefix])
        user, time, kind, request = user[~prefix], time[~prefix], kind[~prefix], request[~prefix]
    granted: dict[int, ReservationGranted] = {}
    # Plain Python values up front: the loop below is the slow part, one ledger call per step.
    user_ids = [f"u{requests.first_user + u}" for u in range(requests.users)]
    owner = requests.user.tolist()
    request_ids = requests.request_id.tolist()
    model_names = [requests.models[m] for m in requests.request_model.tolist()]
    max_input, max_output = requests.max_input.tolist(), requests.max_output.tolist()
    billed_input, billed_output = requests.billed_input.tolist(), requests.billed_output.tolist()
    for r, k, seconds in zip(request.tolist(), kind.tolist(), time.tolist(), strict=True):
        now = month.now(seconds)
        user_id = user_ids[owner[r]]
        if k == _Step.AUTHORIZE:
            ledger.apply_all(ledger.expire_due(now))
            command = Authorize(
                request_id=str(request_ids[r]),
                user_id=user_id,
                model=model_names[r],
                max_input_tokens=max_input[r],
                max_output_tokens=max_output[r],
            )
            verdict = ledger.execute(command, now)[0]  # the grant or denial comes first
            if isinstance(verdict, ReservationGranted):
                granted[r] = verdict
                decision[r] = CapDecision.DEGRADED if verdict.decision == "degrade" else CapDecision.ALLOWED
            else:
                assert isinstance(verdict, ReservationDenied), verdict
                decision[r], cost[r] = CapDecision.DENIED, 0
        elif r in granted:
            reservation = granted.pop(r)
            usage = RecordUsage(
                event_id=f"{name}-{request_ids[r]}",
                user_id=user_id,
                ts=now,
                model=reservation.model,
                input_tokens=billed_input[r],
                output_tokens=billed_output[r],
                reservation_id=reservation.reservation_id,
            )
            settled = ledger.execute(usage, now)[0]
            assert isinstance(settled, UsageRecorded), settled
            cost[r] = settled.cost_nanos


def _granted_prefix(
    user: np.ndarray,
    kind: np.ndarray,
    request: np.ndarray,
    worst: np.ndarray,
    actual: np.ndarray,
    config: EnforcerConfig,
) -> np.ndarray:
    """Events (sorted per user in time) before which nothing can be refused, ending with nothing reserved.

    While every request is granted, the ledger holds spent = the settled requests' cost and reserved =
    the open requests' worst cases; a request is granted as asked when spent + reserved + its worst case
    is within the cap. So everything up to the first request where that sum passes the cap is granted as
    the uncapped run made it; the prefix stops at the last settlement before it that leaves nothing open.
    """
    settle = kind == _Step.SETTLE
    first = np.r_[True, user[1:] != user[:-1]]
    spent = _cumsum_by_group(np.where(settle, actual[request], 0), first)
    reserved = _cumsum_by_group(np.where(settle, -worst[request], worst[request]), first)
    may_refuse = ~settle & (spent + reserved > config.default_plan.cap_nanos)
    refused_yet = _cumsum_by_group(may_refuse.astype(np.int64), first) > 0
    quiet = settle & (reserved == 0) & ~refused_yet
    group = np.cumsum(first) - 1
    last_quiet = np.full(int(group[-1]) + 1, -1, dtype=np.int64)
    index = np.arange(user.size)
    np.maximum.at(last_quiet, group[quiet], index[quiet])
    in_prefix: np.ndarray = index <= last_quiet[group]
    return in_prefix


def _cumsum_by_group(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    running = np.cumsum(values)
    within: np.ndarray = running - _group_base(running - values, first)
    return within


def _settle_prefix(
    month: _Month,
    requests: CapRequests,
    user: np.ndarray,
    time: np.ndarray,
    kind: np.ndarray,
    request: np.ndarray,
) -> None:
    """Record each user's prefix as one usage per model (tokens summed: cost is linear in them)."""
    settled = request[kind == _Step.SETTLE]
    if settled.size == 0:
        return
    models = len(requests.models)
    key = requests.user[settled] * models + requests.request_model[settled]
    keys, inverse = np.unique(key, return_inverse=True)
    inputs = np.bincount(inverse, weights=requests.billed_input[settled]).astype(np.int64)
    outputs = np.bincount(inverse, weights=requests.billed_output[settled]).astype(np.int64)
    last = np.zeros(requests.users)
    np.maximum.at(last, user, time)
    for k, tokens_in, tokens_out in zip(keys.tolist(), inputs.tolist(), outputs.tolist(), strict=True):
        owner, model = divmod(k, models)
        ts = month.now(float(last[owner]))
        user_id = f"u{requests.first_user + owner}"
        month.ledger.execute(
            RecordUsage(
                event_id=f"{requests.scenario.name}-{user_id}-{requests.models[model]}-prefix",
                user_id=user_id,
                ts=ts,
                model=requests.models[model],
                input_tokens=tokens_in,
                output_tokens=tokens_out,
            ),
            ts,
        )


def _shaped(
    run: RunResult,
    catalog: PriceCatalog,
    requests: CapRequests,
    decision: np.ndarray,
    cost: np.ndarray,
    cap_nanos: int,
    users_replayed: int,
) -> RunResult:
    log = run.attempts
    outcomes = RequestOutcomes(
        run.request_model, run.traffic.hard, run.served, run.quality, run.ttft_s, run.fallback
    )
    columns = {name: log.column(name) for name in log.parts}
    shaped = shape(run.scenario, catalog, run.models, decision, outcomes, requests.attempt_request, columns)
    return replace(
        run,
        models=shaped.models,
        request_model=shaped.request_model,
        served=shaped.served,
        cost_nanos=cost,
        quality=shaped.quality,
        ttft_s=shaped.ttft_s,
        fallback=shaped.fallback,
        attempts=AttemptLog({name: [values] for name, values in shaped.attempts.items()}),
        cap=CapEffect(decision, run.cost_nanos, run.quality, cap_nanos, users_replayed),
    )
