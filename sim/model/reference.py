"""The per-request reference: one SimPy process per request, plain Python rules, no vectorization.

It is the oracle the fast path (sim/model/engine.py) must agree with, and the baseline the benchmark measures
against. It draws the same traffic and the same random numbers, then plays every rule one request at a
time, written independently: a true LRU cache with write-time TTL, a rate limiter that counts admitted
calls in true time order, scalar outcome draws, billing, streaming, retries and queues. Where the fast
path approximates (round-ordered rate windows) the two agree closely, elsewhere exactly.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Hashable
from typing import Any

import numpy as np
import simpy

from budget.domain.prices import PriceCatalog
from sim.model import engine
from sim.model import traffic as traffic_module
from sim.model.attempts import AttemptLog
from sim.model.codes import Action, Outcome, Served
from sim.model.policies import prompt_cache, retry, router
from sim.model.policies.provider import LOGISTIC_TO_NORMAL, RATE_LIMIT_REPLY_S, ProviderTable
from sim.model.randomness import Draw, streams_for
from sim.model.reference_context import PromptCacheLog, ReferenceConversation, converse
from sim.model.run import RunResult
from sim.model.scenario import Scenario
from sim.model.traffic import SECONDS_PER_DAY

_MASK = (1 << 64) - 1


def scalar_uniform(key: int, call: int, attempt_no: int, salt: Draw) -> float:
    """The same counter-based uniform as sim.randomness.hashed_uniform, in plain integers."""
    x = (key ^ (salt * 0x9E3779B97F4A7C15)) & _MASK
    x = (x + call * 0x100000001B3 + attempt_no * 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    x ^= x >> 31
    return (x >> 11) / float(1 << 53)


class LruTtlCache:
    """A true LRU of `capacity` entries whose entries live `ttl_s` from their write."""

    def __init__(self, capacity: int, ttl_s: float) -> None:
        self.entries: OrderedDict[Hashable, float] = OrderedDict()
        self.capacity = capacity
        self.ttl_s = ttl_s

    def valid(self, key: Hashable, now: float) -> bool:
        """Is a live entry there? Any access refreshes the entry's recency."""
        written = self.entries.get(key)
        if written is None:
            return False
        self.entries.move_to_end(key)
        return now - written < self.ttl_s

    def write(self, key: Hashable, now: float) -> None:
        self.entries[key] = now
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


def simulate_reference(
    scenario: Scenario, catalog: PriceCatalog, mau: int, days: int, seed: int, replication: int = 0
) -> RunResult:
    """Run the scenario one request at a time; returns the same RunResult shape as the fast path."""
    streams = streams_for(seed, mau, replication)
    traffic = traffic_module.draw(scenario, mau, days, streams)
    conversation = None
    if scenario.prompts.context.active:
        conversation = converse(scenario.prompts.context, traffic)
        traffic = conversation.traffic
    n = traffic.requests
    u_cache = streams.cache.random((3, n))
    request_model = router.route(scenario.router, traffic.hard, streams.router.random(n))
    run = _Reference(scenario, catalog, traffic, request_model, u_cache, streams.attempt_key, conversation)
    run.play()
    served, ttft, fallback, cost, bad_served = run.per_request()
    return RunResult(
        scenario=scenario,
        seed=seed,
        replication=replication,
        traffic=traffic,
        models=scenario.models,
        request_model=request_model,
        served=served,
        fragment_hit=run.fragment,
        cost_nanos=cost,
        quality=engine.quality_scores(scenario, request_model, traffic.hard, served, bad_served),
        ttft_s=ttft,
        fallback=fallback,
        attempts=run.log,
        rounds=0,
    )


class _Reference:
    def __init__(
        self,
        scenario: Scenario,
        catalog: PriceCatalog,
        traffic: traffic_module.Traffic,
        request_model: np.ndarray,
        u_cache: np.ndarray,
        key: int,
        conversation: ReferenceConversation | None,
    ) -> None:
        self.scenario, self.traffic, self.key = scenario, traffic, key
        self.model = request_model.tolist()
        self.u_cache = u_cache.tolist()
        self.table = ProviderTable.of(scenario)
        self.prices = [catalog[m] for m in scenario.models]  # rates by prompt size: rates_for(tokens)
        self.inputs = traffic.input_tokens.tolist()
        self.outputs = traffic.output_tokens.tolist()
        self.summary_of = conversation.summary_of if conversation is not None else {}
        self.prompt_log: PromptCacheLog | None = None
        if conversation is not None:  # read and written as calls are sent
            self.prompt_log = PromptCacheLog(scenario, conversation, self.inputs)
            self.prompt_cached = [0] * traffic.call_request.size
            self.prompt_write = [0] * traffic.call_request.size
        else:
            call_model = request_model[traffic.call_request]
            cached, write = prompt_cache.prompt_cache_tokens(scenario, traffic, call_model)
            self.prompt_cached, self.prompt_write = cached.tolist(), write.tolist()
        layers = scenario.cache
        self.exact = LruTtlCache(layers.exact.capacity, layers.exact.ttl_s)
        self.semantic = LruTtlCache(layers.semantic.capacity, layers.semantic.ttl_s)
        self.fragments = LruTtlCache(layers.fragment.capacity, layers.fragment.ttl_s)
        self.p_true, self.p_false = engine.semantic_rates(scenario)
        self.windows: dict[tuple[int, int], list[int]] = {}
        horizon_s = (traffic.days + engine.RATE_HORIZON_DAYS) * SECONDS_PER_DAY
        self.last_window = int(horizon_s // retry.RATE_WINDOW_S)
        n = traffic.requests
        self.served = np.full(n, Served.MODEL, dtype=np.int64)
        self.fragment = np.zeros(n, dtype=bool)
        self.rows: list[tuple[Any, ...]] = []
        self.log = AttemptLog()
        self.env = simpy.Environment()
        self.queue = _WindowQueue(self.env, self.table, scenario.retry.queue_windows, self._window)
        self.calls_of: list[list[int]] = [[] for _ in range(n)]  # a request's own calls, in order
        summaries = set(self.summary_of.values())
        for call, request in enumerate(traffic.call_request.tolist()):
            if call not in summaries:
                self.calls_of[request].append(call)

    def play(self) -> None:
        for request in np.argsort(self.traffic.t, kind="stable").tolist():
            self.env.process(self.request(request))
        self.env.run()
        columns = list(zip(*self.rows, strict=True)) if self.rows else [()] * 12
        names = ("call", "t", "model", "outcome", "action", "billed_input", "billed_output", "cost_nanos")
        names_cache = ("billed_cached", "billed_write")
        self.log.add(
            **{
                name: np.asarray(col)
                for name, col in zip(
                    (*names, *names_cache, "visible_at", "finished_at"), columns, strict=True
                )
            }
        )

    def request(self, i: int) -> Generator[simpy.Event, None, None]:
        traffic = self.traffic
        yield self.env.timeout(float(traffic.t[i]) - self.env.now)
        now = self.env.now
        answered = self._cached(i, now)
        offset = 0.0
        model = self.model[i]
        # The history's summary is made first, whatever answers the turn: the next turns carry it.
        summary = self.summary_of.get(i)
        if summary is not None:
            self._send(summary, model, now, now)
            offset += self._clean_duration(summary, model)
        if answered:
            return
        for call in self.calls_of[i]:
            if bool(traffic.call_deterministic[call]) and self.fragment[i]:
                continue
            self._send(call, model, now + offset, now)
            offset += self._clean_duration(call, model)

    def _send(self, call: int, model: int, start: float, request_time: float) -> None:
        """Start the call's process at `start`; its prompt meets the provider cache at its request's time."""
        if self.prompt_log is not None:
            read, wrote = self.prompt_log.send(call, model, request_time)
            self.prompt_cached[call], self.prompt_write[call] = read, wrote
        self.env.process(self.call(call, model, start))

    def _clean_duration(self, call: int, model: int) -> float:
        return float(self.table.ttft_s[model] + self.outputs[call] / self.table.tokens_per_s[model])

    def _cached(self, i: int, now: float) -> bool:
        layers, traffic = self.scenario.cache, self.traffic
        u_exact, u_true, u_false = self.u_cache[0][i], self.u_cache[1][i], self.u_cache[2][i]
        if layers.exact.enabled:
            key: Hashable = int(traffic.exact_key[i]) if traffic.exact_key[i] >= 0 else ("once", i)
            if self.exact.valid(key, now) and u_exact < 1.0:
                self.served[i] = Served.EXACT
                return True
            self.exact.write(key, now)
        if layers.semantic.enabled:
            key = int(traffic.cluster[i]) if traffic.cluster[i] >= 0 else ("once", i)
            if self.semantic.valid(key, now) and u_true < self.p_true:
                self.served[i] = Served.SEMANTIC
                return True
            if u_false < self.p_false:
                self.served[i] = Served.FALSE_HIT
                return True
            self.semantic.write(key, now)
        context = int(traffic.context[i])
        if layers.fragment.enabled and context >= 0 and self.scenario.prompts.chains.deterministic_steps > 0:
            if self.fragments.valid(context, now):
                self.fragment[i] = True
            else:
                self.fragments.write(context, now)
        return False

    def call(self, call: int, model: int, start: float) -> Generator[simpy.Event, None, None]:
        yield self.env.timeout(start - self.env.now)
        attempt_no = retries = 0
        regenerated = False
        tokens = int(self.traffic.input_tokens[call]) + int(self.traffic.output_tokens[call])
        while True:
            now = self.env.now
            outcome, duration, visible, billed_in, billed_out = self._attempt(
                call, model, attempt_no, regenerated, now
            )
            jitter = scalar_uniform(self.key, call, attempt_no, Draw.JITTER)
            action, next_t = self._follow_up(outcome, now, duration, retries, jitter)
            if action == Action.QUEUE and tokens > self.table.tpm[model]:
                action = Action.FAILED  # no window could ever hold it
            rates = self.prices[model].rates_for(self.inputs[call])
            price_in, price_out = rates.input, rates.output
            price_cached, price_write = rates.cached_input, rates.cache_write
            read = self.prompt_cached[call] if billed_in else 0
            wrote = self.prompt_write[call] if billed_in else 0
            cost = (billed_in - read - wrote) * price_in + billed_out * price_out
            cost += read * price_cached + wrote * price_write
            row = len(self.rows)
            self.rows.append(
                (
                    call,
                    now,
                    model,
                    outcome,
                    action,
                    billed_in,
                    billed_out,
                    cost,
                    read,
                    wrote,
                    now + visible,
                    now + duration,
                )
            )
            if action in (Action.DONE, Action.FAILED):
                return
            attempt_no += 1
            retries += action == Action.RETRY
            regenerated = regenerated or action == Action.REGENERATE
            if action != Action.QUEUE:
                yield self.env.timeout(next_t - now)
                continue
            released = yield self.queue.join(model, tokens, int(now // retry.RATE_WINDOW_S))
            if not released:  # it waited all its windows: the row's action says so
                self.rows[row] = (*self.rows[row][:4], Action.GIVE_UP, *self.rows[row][5:])
                return

    def _window(self, model: int, window: int) -> list[int]:
        """The model's window's counts: requests and tokens admitted, and 1 once it refused a call."""
        return self.windows.setdefault((model, min(window, self.last_window)), [0, 0, 0])

    def _admit(self, model: int, now: float, tokens: int) -> bool:
        """A window admits while both budgets hold; after its first rejection it stays closed."""
        table = self.table
        counts = self._window(model, int(now // retry.RATE_WINDOW_S))
        if counts[2] or counts[0] + 1 > table.rpm[model] or counts[1] + tokens > table.tpm[model]:
            counts[2] = 1
            return False
        counts[0] += 1
        counts[1] += tokens
        return True

    def _attempt(
        self, call: int, model: int, attempt_no: int, regenerated: bool, now: float
    ) -> tuple[Outcome, float, float, int, int]:
        """One attempt: (outcome, duration, first visible offset, billed input, billed output)."""
        table, streaming = self.table, self.scenario.streaming
        inputs, outputs = self.inputs[call], self.outputs[call]
        if not self._admit(model, now, inputs + outputs):
            return Outcome.RATE_LIMITED, RATE_LIMIT_REPLY_S, 0.0, 0, 0
        u_ttft = min(max(scalar_uniform(self.key, call, attempt_no, Draw.TTFT), 1e-12), 1 - 1e-12)
        spread = math.exp(
            float(table.ttft_sigma[model]) * LOGISTIC_TO_NORMAL * math.log(u_ttft / (1 - u_ttft))
        )
        ttft, speed = float(table.ttft_s[model]) * spread, float(table.tokens_per_s[model])
        full = ttft + outputs / speed
        visible = ttft if streaming.enabled else full
        u = scalar_uniform(self.key, call, attempt_no, Draw.OUTCOME)
        error_edge = table.error_rate[model]
        timeout_edge = error_edge + table.timeout_rate[model]
        if u < error_edge:
            billed = _billed(table.error_bills[model], inputs, outputs)
            return Outcome.ERROR, ttft, visible, *billed
        if u < timeout_edge:
            if streaming.enabled:
                streamed = int(np.floor(scalar_uniform(self.key, call, attempt_no, Draw.STALL) * outputs))
                billed = _billed(table.timeout_bills[model], inputs, streamed)
                return Outcome.TIMEOUT, streaming.stall_detect_s, visible, *billed
            billed = _billed(table.timeout_bills[model], inputs, outputs)
            return Outcome.TIMEOUT, float(table.timeout_s[model]), visible, *billed
        if u < timeout_edge + table.bad_rate[model]:
            if regenerated:
                return Outcome.BAD_SERVED, full, visible, inputs, outputs
            if streaming.enabled:
                seen = min(outputs, streaming.detect_bad_after_tokens)
                return Outcome.BAD, ttft + seen / speed, visible, inputs, seen
            return Outcome.BAD, full, visible, inputs, outputs
        return Outcome.OK, full, visible, inputs, outputs

    def _follow_up(
        self, outcome: Outcome, now: float, duration: float, retries: int, jitter: float
    ) -> tuple[Action, float]:
        policy = self.scenario.retry
        finished = now + duration
        if outcome in (Outcome.OK, Outcome.BAD_SERVED):
            return Action.DONE, finished
        if outcome == Outcome.BAD:
            return Action.REGENERATE, finished
        limit = retry.retry_limit(policy)
        transient = outcome in (Outcome.ERROR, Outcome.TIMEOUT)
        if policy.policy == "cost-aware" and outcome == Outcome.RATE_LIMITED:
            return Action.QUEUE, (now // retry.RATE_WINDOW_S + 1) * retry.RATE_WINDOW_S
        if retries < limit and (transient or policy.policy != "cost-aware"):
            if policy.policy == "sdk-default":
                wait = min(0.5 * 2.0**retries, 8.0) * (1.0 - 0.25 * jitter)
            else:
                wait = policy.backoff_base_s * 2.0**retries
            return Action.RETRY, finished + wait
        return Action.FAILED, finished

    def per_request(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n, traffic = self.traffic.requests, self.traffic
        served, ttft = self.served.copy(), np.full(n, np.nan)
        fallback, bad_served = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        cost = [0] * n
        visible = [-np.inf] * n
        for call, _t, _m, outcome, action, _bi, _bo, nanos, _bc, _bw, seen, _f in self.rows:
            request = int(traffic.call_request[call])
            cost[request] += nanos
            if (
                action in (Action.FAILED, Action.GIVE_UP) and served[request] == Served.MODEL
            ):  # a cache's answer stands
                served[request] = Served.FAILED
            elif action == Action.DONE:
                visible[request] = max(visible[request], seen)
                bad_served[request] |= outcome == Outcome.BAD_SERVED
            fallback[request] |= action in (Action.QUEUE, Action.GIVE_UP)
        by_model = served == Served.MODEL
        bad_served &= by_model  # a bad summary does not spoil an answer a cache gave
        ttft[by_model] = (np.asarray(visible) - traffic.t)[by_model]
        ttft[served == Served.EXACT] = engine.EXACT_HIT_S
        ttft[(served == Served.SEMANTIC) | (served == Served.FALSE_HIT)] = engine.SEMANTIC_HIT_S
        return served, ttft, fallback, np.asarray(cost, dtype=np.int64), bad_served


class _WindowQueue:
    """The cost-aware client's queue, played one window start at a time: a queued call waits on its event
    (True: sent now; False: it gave up). At each window's start, per model, the calls that have waited all
    their windows give up; then the oldest go while the window has room for them."""

    def __init__(
        self,
        env: simpy.Environment,
        table: ProviderTable,
        patience: int,
        window: Callable[[int, int], list[int]],
    ) -> None:
        self.env, self.table, self.patience, self.window = env, table, patience, window
        self.waiting: dict[int, deque[tuple[int, int, simpy.Event]]] = {}
        self.draining: set[int] = set()

    def join(self, model: int, tokens: int, window: int) -> simpy.Event:
        """Queue a call refused in `window`; the event fires when it is sent or gives up."""
        event = self.env.event()
        self.waiting.setdefault(model, deque()).append((window, tokens, event))
        if model not in self.draining:
            self.draining.add(model)
            self.env.process(self._drain(model))
        return event

    def _drain(self, model: int) -> Generator[simpy.Event, None, None]:
        queue = self.waiting[model]
        rpm, tpm = int(self.table.rpm[model]), int(self.table.tpm[model])
        while queue:
            now = self.env.now
            yield self.env.timeout((now // retry.RATE_WINDOW_S + 1) * retry.RATE_WINDOW_S - now)
            start = int(self.env.now // retry.RATE_WINDOW_S)
            while queue and queue[0][0] + self.patience < start:
                queue.popleft()[2].succeed(False)
            requests, tokens, closed = self.window(model, start)
            if closed:
                requests = rpm
            while queue and queue[0][0] < start and requests < rpm and tokens + queue[0][1] <= tpm:
                _, size, event = queue.popleft()
                requests, tokens = requests + 1, tokens + size
                event.succeed(True)
        self.draining.discard(model)


def _billed(rule: str, inputs: int, outputs: int) -> tuple[int, int]:
    """What a failed attempt bills under the provider's rule."""
    if rule == "nothing":
        return 0, 0
    if rule == "input":
        return inputs, 0
    return inputs, outputs
