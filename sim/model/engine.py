"""The fast path: one run of a scenario at one MAU level, in vectorized batches inside a SimPy clock.

traffic -> cache layers -> router -> calls -> provider attempts (rate windows, retries, queues) per tick ->
per-request outcome, cost, quality and time to first token. SimPy owns the clock: one process steps it a
tick (a simulated day) at a time, and each tick's attempts are made in vectorized rounds
(sim/model/attempts.py). The per-request reference (sim/model/reference.py) plays the same rules one
request at a time; tests hold the two to the same totals.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np
import simpy

from budget.domain.prices import PriceCatalog
from sim.model import request_fold
from sim.model import traffic as traffic_module
from sim.model.attempt_clock import RATE_HORIZON_DAYS as RATE_HORIZON_DAYS  # read by the reference
from sim.model.attempt_clock import TICK_S, AttemptClock
from sim.model.attempts import AttemptLog, CallSheet
from sim.model.caps import apply_cap
from sim.model.codes import Served
from sim.model.policies import cache, prompt_cache, provider, router
from sim.model.pricing import PriceSheet
from sim.model.randomness import streams_for
from sim.model.request_fold import EXACT_HIT_S as EXACT_HIT_S  # read by the reference and tests
from sim.model.request_fold import SEMANTIC_HIT_S as SEMANTIC_HIT_S
from sim.model.run import RunResult, calls_needing_model
from sim.model.scenario import Scenario
from sim.model.traffic import Traffic


def simulate(
    scenario: Scenario,
    catalog: PriceCatalog,
    mau: int,
    days: int,
    seed: int,
    replication: int = 0,
    traffic: Traffic | None = None,
    on_phase: Callable[[str], object] | None = None,
) -> RunResult:
    """Run the scenario once at `mau` users for `days` days.

    `traffic` replaces the drawn traffic (a replayed trace, sim/io/traces.py); then its own mau and days hold.
    `on_phase` hears what the run starts on next ("traffic", "caches", "attempts, day 3 of 30", ...): a
    few dozen calls a run, so a progress display costs the engine nothing.
    """
    phase = on_phase or _ignore
    streams = streams_for(seed, mau, replication)
    if traffic is None:
        phase("traffic")
        traffic = traffic_module.generate(scenario, mau, days, streams)
    days = traffic.days
    n = traffic.requests
    phase("caches")
    exact, semantic, fragment = cache_layers(scenario, traffic, streams.cache)
    request_model = router.route(scenario.router, traffic.hard, streams.router.random(n))
    table = provider.ProviderTable.of(scenario)
    answered_by_cache = exact | semantic.true_hit | semantic.false_hit
    needed = calls_needing_model(traffic, answered_by_cache, fragment)
    call_ids = np.flatnonzero(needed)
    call_model = request_model.astype(np.int8)[traffic.call_request]  # model codes are small
    start = (
        traffic.t[traffic.call_request[call_ids]]
        + chain_offsets(traffic, table, call_model, needed)[call_ids]
    )
    prices = PriceSheet.of(catalog, scenario.models)
    sheet = CallSheet(
        model=call_model,
        input_tokens=traffic.input_tokens,
        output_tokens=traffic.output_tokens,
        input_price=prices.input,
        output_price=prices.output,
        price_row=prices.call_rows(call_model, traffic.input_tokens),
        **prompt_cache_sheet(scenario, prices, traffic, call_model, needed),
    )
    log, rounds = _attempt_clock(scenario, table, sheet, streams.attempt_key, call_ids, start, days, phase)
    phase("requests")
    served, ttft, fallback, cost, bad_served = _per_request(traffic, log, exact, semantic)
    quality = quality_scores(scenario, request_model, traffic.hard, served, bad_served)
    result = RunResult(
        scenario=scenario,
        seed=seed,
        replication=replication,
        traffic=traffic,
        models=scenario.models,
        request_model=request_model,
        served=served,
        fragment_hit=fragment,
        cost_nanos=cost,
        quality=quality,
        ttft_s=ttft,
        fallback=fallback,
        attempts=log,
        rounds=rounds,
    )
    if scenario.cap is None:
        return result
    phase("cap")
    return apply_cap(result, catalog)


def _ignore(_phase: str) -> None:
    pass


def prompt_cache_sheet(
    scenario: Scenario, prices: PriceSheet, traffic: Traffic, call_model: np.ndarray, sent: np.ndarray
) -> dict[str, np.ndarray]:
    """The CallSheet's prompt-cache columns; empty when no provider of the scenario caches prompts.
    `sent` marks the calls that go to a model."""
    if not prompt_caching(scenario, traffic):
        return {}
    cached, write = prompt_cache.prompt_cache_tokens(scenario, traffic, call_model, sent)
    return {
        "cached_input": cached,
        "cache_write": write,
        "cached_price": prices.cached_input,
        "write_price": prices.cache_write,
    }


def prompt_caching(scenario: Scenario, traffic: Traffic) -> bool:
    """Does any call of the scenario read or write a provider's prompt cache? Not when no provider caches
    prompts, nor when the traffic has no prefix to cache."""
    if not any(scenario.provider(m).prompt_cache for m in scenario.models):
        return False
    return (
        traffic.conversation is not None or bool(traffic.prefix_blocks) or scenario.prompts.prefix_share > 0
    )


def cache_layers(
    scenario: Scenario, traffic: Traffic, rng: np.random.Generator
) -> tuple[np.ndarray, cache.LayerHits, np.ndarray]:
    """Exact hits, semantic hits (true and false) among exact misses, and fragment hits among the rest.

    `rng` is the run's cache stream: three uniforms per request, a row of them per use (the exact
    layer's, then the semantic layer's true- and false-hit draws), all drawn into one buffer -- the same
    numbers as one (3, requests) draw, without two more arrays of that size.
    """
    n = traffic.requests
    layers = scenario.cache
    u = rng.random(n)
    exact = np.zeros(n, dtype=bool)
    if layers.exact.enabled:
        never = np.broadcast_to(1.0, n)  # no false hits: a constant, not an array of ones
        exact = cache.lookup(
            traffic.exact_key, traffic.t, layers.exact.ttl_s, layers.exact.capacity, 1.0, 0.0, u, never
        ).true_hit
    true_hit, false_hit = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    if layers.semantic.enabled:
        rows = np.flatnonzero(~exact)
        keys = traffic.cluster[rows]
        p_true, p_false = semantic_rates(scenario)
        u_true = rng.random(out=u)[rows]  # the second row of draws, then the third
        u_false = rng.random(out=u)[rows]
        hits = cache.lookup(
            keys,
            traffic.t[rows],
            layers.semantic.ttl_s,
            layers.semantic.capacity,
            p_true,
            p_false,
            u_true,
            u_false,
        )
        true_hit[rows], false_hit[rows] = hits.true_hit, hits.false_hit
    fragment = np.zeros(n, dtype=bool)
    if layers.fragment.enabled and scenario.prompts.chains.deterministic_steps > 0:
        rows = np.flatnonzero(~(exact | true_hit | false_hit) & (traffic.context >= 0))
        keys = traffic.context[rows]
        fragment[rows] = cache.lookup(
            keys,
            traffic.t[rows],
            layers.fragment.ttl_s,
            layers.fragment.capacity,
            1.0,
            0.0,
            np.broadcast_to(0.0, rows.size),
            np.broadcast_to(1.0, rows.size),
        ).true_hit
    return exact, cache.LayerHits(true_hit, false_hit), fragment


def semantic_rates(scenario: Scenario) -> tuple[float, float]:
    """True- and false-hit probabilities at the configured threshold, linear in the profile."""
    semantic = scenario.cache.semantic
    profile = np.asarray(semantic.profile, dtype=np.float64)
    p_true = float(np.interp(semantic.threshold, profile[:, 0], profile[:, 1]))
    p_false = float(np.interp(semantic.threshold, profile[:, 0], profile[:, 2]))
    return p_true, p_false


def chain_offsets(
    traffic: Traffic, table: provider.ProviderTable, call_model: np.ndarray, needed: np.ndarray
) -> np.ndarray:
    """When each call of a request starts: after the clean duration of its history's summary, if any, and
    of the needed chain steps before it.

    Every chain has the same number of steps, so step k of every chain is one column: a few numpy steps.
    """
    offsets = np.zeros(traffic.call_request.size)
    summaries = traffic.conversation.summaries if traffic.conversation is not None else 0
    if summaries:
        summary = np.arange(traffic.call_request.size - summaries, traffic.call_request.size)
        model = call_model[summary]
        wait = np.zeros(traffic.requests)
        wait[traffic.call_request[summary]] = (
            table.ttft_s[model] + traffic.output_tokens[summary] / (table.tokens_per_s[model])
        )
        offsets = wait[traffic.call_request]
        offsets[summary] = 0.0
    if traffic.steps < 2:
        return offsets
    first_call = np.flatnonzero(traffic.call_step == 1) - 1  # a chain's step 1 follows its first call
    model = call_model[first_call]  # one model answers a whole chain
    ttft, speed = table.ttft_s[model], table.tokens_per_s[model]
    elapsed = np.zeros(first_call.size)
    for step in range(1, traffic.steps):  # a handful of steps: one column at a time
        before = first_call + step - 1
        elapsed += np.where(needed[before], ttft + traffic.output_tokens[before] / speed, 0.0)
        offsets[first_call + step] += elapsed
    return offsets


def _attempt_clock(
    scenario: Scenario,
    table: provider.ProviderTable,
    sheet: CallSheet,
    key: int,
    calls: np.ndarray,
    starts: np.ndarray,
    days: int,
    phase: Callable[[str], object],
) -> tuple[AttemptLog, int]:
    """SimPy steps the clock a tick at a time; each tick's attempts are made by a TickRunner.

    The whole run is the resumable clock's one-chunk case (sim/model/attempt_clock.py): every call is
    added at once, then ticks are played until nothing is left (at least one, as a run always had).
    """
    env = simpy.Environment()
    log = AttemptLog()
    clock = AttemptClock(scenario, table, sheet, key, days)
    clock.add(calls, starts)

    def ticks() -> Generator[simpy.Event, None, None]:
        while clock.tick == 0 or clock.busy:
            tick = clock.tick
            phase(f"attempts, day {tick + 1} of {days}" if tick < days else "attempts after the last day")
            clock.run_tick(log)
            yield env.timeout(TICK_S)

    env.process(ticks())
    env.run()
    return log, clock.rounds


def _per_request(
    traffic: Traffic, log: AttemptLog, exact: np.ndarray, semantic: cache.LayerHits
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fold attempts into requests: who served it, when the first token showed, its cost.

    The whole log at once, by the rules a streaming fold applies a tick at a time (sim/model/request_fold.py).
    """
    tally = request_fold.Outcomes.empty(traffic.requests)
    request = traffic.call_request[np.asarray(log.column("call"), dtype=np.intp)]  # int32 ids, or empty
    request_fold.accumulate(tally, request, log)
    done = request_fold.finish(tally, traffic.t, exact, semantic.true_hit, semantic.false_hit)
    return done.served, done.ttft, done.fallback, done.cost, done.bad_served


def quality_scores(
    scenario: Scenario,
    request_model: np.ndarray,
    hard: np.ndarray,
    served: np.ndarray,
    bad_served: np.ndarray,
) -> np.ndarray:
    """Score per request: the answering model's eval score for its difficulty; wrong answers score low."""
    scores = np.array(
        [[scenario.quality_of(m).easy, scenario.quality_of(m).hard] for m in scenario.models],
        dtype=np.float64,
    )
    # A flat index into scores (row: model, column: hard), in int8: models are few, so it stays small.
    flat = request_model.astype(np.int8) * np.int8(2)
    flat += hard
    quality: np.ndarray = scores.ravel()[flat]
    quality[bad_served | (served == Served.FALSE_HIT)] = scenario.quality.false_hit
    quality[served == Served.FAILED] = scenario.quality.failed
    return quality
