"""Opening a day for the streaming engine's day loop: its requests' cache answers and its calls that go to
a model, with what the clock and the fold read of them.

Opening reads only the day's traffic and the state opening the day before left -- the response cache
layers' LRU stacks (sim/model/day_caches.py) and the provider prompt caches' prefixes
(sim/model/policies/prompt_cache.py `advance`) -- never the clock's outcomes. So a `DayOpener` may open day
d + 1 while the day loop plays day d (sim/io/streaming_run.py does, on a second thread: most of opening is
numpy work that runs without the interpreter lock). It uses the whole-run engine's own functions (router,
calls needing a model, chain offsets) on a `Traffic` of the day with local ids, so no rule has a second
copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.model.cap_pass import cap_carry
from sim.model.conversation import Conversation
from sim.model.day_caches import DayRequests, LayerStates, day_cache_layers
from sim.model.engine import chain_offsets, prompt_caching, semantic_rates
from sim.model.policies import prompt_cache, provider, router
from sim.model.policies.cache import LayerHits
from sim.model.pricing import PriceSheet
from sim.model.run import calls_needing_model
from sim.model.scenario import Scenario
from sim.model.sorted_search import positions
from sim.model.traffic import Traffic
from sim.model.traffic_blocks import U_EXACT, U_FALSE, U_ROUTER, U_TRUE, DayTraffic
from sim.model.usage_chunk import fragment_calls


@dataclass(frozen=True, slots=True)
class OpenedDay:
    """A day's requests (ascending ids) with their arrival times and cache answers, and their calls that
    go to a model (ascending ids) with when each first starts, its request's id and its columns for the
    clock's sheet; `carry`: what the fold hands back with each request when it finishes."""

    request: np.ndarray
    t: np.ndarray
    exact: np.ndarray
    semantic: LayerHits
    call: np.ndarray
    starts: np.ndarray
    call_request: np.ndarray
    sheet: dict[str, np.ndarray]
    carry: dict[str, np.ndarray]


class DayOpener:
    """Opens days in order (`open`), carrying the cache layers' and prompt caches' state from one to the
    next."""

    def __init__(
        self,
        scenario: Scenario,
        table: provider.ProviderTable,
        prices: PriceSheet,
        mau: int,
        days: int,
        capped: bool,
        usage: bool,
    ) -> None:
        """`table`: the scenario's provider table (the day loop's, built once). `capped`: carry what the
        cap pass needs with each request (sim/model/cap_pass.py); `usage`: carry each request's count of
        cached fragment calls (its usage rows need them)."""
        self.scenario, self.prices, self.mau, self.days = scenario, prices, mau, days
        self.capped, self.usage = capped, usage
        self.table = table
        self.p_true, self.p_false = semantic_rates(scenario)
        self.states = LayerStates.empty()
        self.prompt_state = prompt_cache.initial_state(scenario)

    def open(self, day: DayTraffic, last: bool) -> OpenedDay:
        """Open `day` (a part of several days: all of them), the one after the last opened. `last`: no
        later day brings requests (the cache layers then carry nothing on)."""
        requests = day.requests
        traffic = _local_traffic(self.scenario, self.mau, self.days, day)
        draws = DayRequests(
            traffic.t, traffic.exact_key, traffic.cluster, traffic.context,
            *(_draw(requests, name, traffic.requests) for name in (U_EXACT, U_TRUE, U_FALSE)),
        )  # fmt: skip
        exact, semantic, fragment, self.states = day_cache_layers(
            self.scenario, draws, self.p_true, self.p_false, self.states, last
        )
        request_model = router.route(
            self.scenario.router, traffic.hard, _draw(requests, U_ROUTER, traffic.requests)
        )
        answered = exact | semantic.true_hit | semantic.false_hit
        needed = calls_needing_model(traffic, answered, fragment)
        call_model = request_model.astype(np.int8)[traffic.call_request]
        local = np.flatnonzero(needed)
        starts = (
            traffic.t[traffic.call_request[local]]
            + chain_offsets(traffic, self.table, call_model, needed)[local]
        )
        prompt_tokens = self._prompt_cache(traffic, call_model, needed)
        return OpenedDay(
            request=requests["request"],
            t=traffic.t,
            exact=exact,
            semantic=semantic,
            call=day.calls["call"][local].astype(np.int64),
            starts=starts,
            call_request=requests["request"][traffic.call_request[local]],
            sheet=self._sheet_columns(call_model, traffic, local, prompt_tokens),
            carry={
                "user": traffic.user,
                "context": traffic.context,
                "hard": traffic.hard,
                "fragment_hit": fragment,
                "request_model": request_model,
                **({"fragment_calls": fragment_calls(traffic, fragment)} if self.usage else {}),
                **(cap_carry(self.scenario, traffic, local) if self.capped else {}),
            },
        )

    def _prompt_cache(
        self, traffic: Traffic, call_model: np.ndarray, needed: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The day's calls' prompt-cache tokens (every call of the day), the state carried on."""
        if not prompt_caching(self.scenario, traffic):
            return {}
        chunk = prompt_cache.chunk_calls(self.scenario, traffic, call_model, needed)
        cached, write, self.prompt_state = prompt_cache.advance(self.scenario, self.prompt_state, chunk)
        return {"cached_input": cached, "cache_write": write}

    def _sheet_columns(
        self,
        call_model: np.ndarray,
        traffic: Traffic,
        local: np.ndarray,
        prompt_tokens: dict[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """The clock's sheet columns of the day's calls to a model (`local`: their places in the day)."""
        model = call_model[local]
        columns = {
            "model": model,
            "input_tokens": traffic.input_tokens[local],
            "output_tokens": traffic.output_tokens[local],
            **{name: values[local] for name, values in prompt_tokens.items()},
        }
        rows = self.prices.call_rows(model, traffic.input_tokens[local])
        if rows is not None:
            columns["price_row"] = rows
        return columns


def _draw(requests: dict[str, np.ndarray], name: str, n: int) -> np.ndarray:
    """A day's engine draw, or a constant where the scenario does not use it (then nothing reads it)."""
    values = requests.get(name)
    return values if values is not None else np.broadcast_to(0.0, n)


def _local_traffic(scenario: Scenario, mau: int, days: int, day: DayTraffic) -> Traffic:
    """The day's requests and calls as a Traffic with local ids: request i is the day's i-th (ascending
    global id), call j its j-th call (summary calls last, as in a whole run)."""
    requests, calls = day.requests, day.calls
    call_request = positions(requests["request"], calls["call_request"])
    conversation = None
    if scenario.prompts.context.active:
        context = scenario.prompts.context
        conversation = Conversation(
            system_tokens=context.system_tokens,
            history_carried=context.history,
            history=requests["history"],
            epoch=requests["epoch"],
            summary_epoch=day.summaries.get("summary_epoch", np.zeros(0, dtype=np.int32)),
            summaries=int(day.summaries["call"].size) if day.summaries else 0,
        )
    return Traffic(
        mau=mau,
        days=days,
        sessions=0,
        t=requests["t"],
        user=requests["user"],
        exact_key=requests["exact_key"],
        cluster=requests["cluster"],
        context=requests["context"],
        hard=requests["hard"],
        call_request=call_request,
        call_step=calls["call_step"],
        call_deterministic=calls["call_deterministic"],
        input_tokens=calls["input_tokens"],
        output_tokens=calls["output_tokens"],
        steps=scenario.prompts.chains.steps,
        conversation=conversation,
    )
