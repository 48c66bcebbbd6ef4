"""A per-user cap in the streaming engine: finished requests spilled by user block, capped after the run.

The whole-run engine applies the cap after the run (sim/model/caps.py `apply_cap`): its decisions do not
change attempts -- a degraded request keeps its attempts, repriced at the degrade model; a denied one's
are dropped; caches and rate windows are not replayed -- so the cap is a pass over finished requests and
their attempts, per period and per user, and users never meet in it. The streaming engine's day loop
therefore hands its finished requests and attempt rows to a `CapPass` instead of folding them into the
figures; the pass keeps them by block of users in a `UserBlockStore` (on disk: sim/io/user_block_spill.py),
and after the day loop reads one block back at a time, decides its cap with `caps.cap_decisions`, shapes
it with `cap_shape.shape` -- the very code `apply_cap` runs -- and folds it into the run's figures.

Memory: the day loop carries 17 more bytes per open request (has_call, max_input, max_output); the pass
itself holds nothing between calls but the spill's directory (on disk: per finished request 15 values,
per attempt row 9). Folding holds one block of users' requests and attempts, their ledgers and the figures.

Given a `usage` sink (the forecast DB's usage rows, `--out`), the pass spills what those rows read beside
(an attempt's time and cost, a request's count of cached fragment calls) and hands each block's rows to
the sink after its cap: a denied request's attempts dropped, a degraded one's at the degrade model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from budget.domain.prices import PriceCatalog
from sim.model.attempts import AttemptLog
from sim.model.cap_shape import RequestOutcomes, shape
from sim.model.caps import CapRequests, cap_decisions, token_bounds
from sim.model.codes import CapDecision
from sim.model.request_fold import Finished, RequestFold
from sim.model.run_figures import ATTEMPT_COLUMNS, RequestChunk, RunFigures
from sim.model.scenario import Scenario
from sim.model.traffic import Traffic
from sim.model.usage_chunk import USAGE_ATTEMPT_COLUMNS, UsageChunk, of_requests

# Per attempt row: what the figures read (ATTEMPT_COLUMNS) and what the cap's ledger reads.
CAP_ATTEMPT_COLUMNS = (*ATTEMPT_COLUMNS, "finished_at")
# Per attempt row, beside those, when the pass hands out usage rows.
USAGE_SPILLED = tuple(name for name in USAGE_ATTEMPT_COLUMNS if name not in CAP_ATTEMPT_COLUMNS)
# Per request, carried by the day loop's RequestFold from the request's opening: the cap's worst case.
CAP_CARRY_COLUMNS = ("has_call", "max_input", "max_output")


class UserBlockStore(Protocol):
    """Where the pass keeps rows by block of users (sim/io/user_block_spill.py `UserBlockSpill`): rows added
    with each one's user, read back a block of `users_per_block` users at a time in the order added."""

    users_per_block: int

    def add(self, table: str, user: np.ndarray, columns: dict[str, np.ndarray]) -> None: ...

    def blocks(self, table: str) -> list[int]: ...

    def read(self, table: str, block: int) -> dict[str, np.ndarray]: ...


class CapPass:
    """Collects a streaming run's finished requests and attempts by user block; caps and folds them after.

    Call `carry` when the day loop opens requests, `add_attempts` with each tick's log before the fold
    reads it, `add_requests` with what the fold finished, and `fold_into` once every request finished.
    """

    def __init__(
        self,
        scenario: Scenario,
        catalog: PriceCatalog,
        mau: int,
        days: int,
        spill: UserBlockStore,
        usage: Callable[[UsageChunk], object] | None = None,
    ) -> None:
        """`usage`: hears each block's usage rows as the cap leaves them (the day loop must then carry
        each request's `fragment_calls`)."""
        if scenario.cap is None:
            raise ValueError(f"{scenario.name} has no cap to pass over")
        self.scenario, self.catalog, self.mau, self.days = scenario, catalog, mau, days
        self.spill = spill
        self.usage = usage
        # With usage rows to hand out: what they read of an attempt and of a request, spilled too.
        self.attempt_columns = CAP_ATTEMPT_COLUMNS + (USAGE_SPILLED if usage is not None else ())

    def add_attempts(self, fold: RequestFold, log: AttemptLog) -> None:
        """Spill a tick's attempt rows with their request ids; call before `fold.fold(log)` (which forgets
        the calls it finishes)."""
        call = np.asarray(log.column("call"), dtype=np.int64)
        if not call.size:
            return
        request = fold.requests_of(call)
        user = fold.carried_of(request, "user")
        columns = {"request": request}
        for name in self.attempt_columns:
            values = log.column(name)
            if values.size == call.size:  # a column the tick did not log (no such tokens) is left out
                columns[name] = values
        self.spill.add("attempts", user, columns)

    def add_requests(self, finished: Finished, quality: np.ndarray) -> None:
        """Spill finished requests: what the fold carried and worked out, their quality without the cap."""
        carried, outcomes = finished.carried, finished.outcomes
        columns = {
            "request": finished.request,
            "t": finished.t,
            **{name: carried[name] for name in ("user", "context", "hard", "fragment_hit")},
            "request_model": carried["request_model"],
            **{name: carried[name] for name in CAP_CARRY_COLUMNS},
            "served": outcomes.served,
            "cost_nanos": outcomes.cost,
            "quality": quality,
            "ttft_s": outcomes.ttft,
            "fallback": outcomes.fallback,
            **({"fragment_calls": carried["fragment_calls"]} if self.usage is not None else {}),
        }
        self.spill.add("requests", carried["user"], columns)

    def fold_into(self, figures: RunFigures) -> None:
        """Cap every block of users and fold it into `figures` (made with `capped=True` and the scenario's
        models; the cap's degrade model is added to them when a request is degraded to it)."""
        for block in self.spill.blocks("requests"):
            self._fold_block(block, figures)

    def _fold_block(self, block: int, figures: RunFigures) -> None:
        requests = self.spill.read("requests", block)
        order = np.argsort(requests["request"], kind="stable")  # the whole run's order: ties break alike
        requests = {name: values[order] for name, values in requests.items()}
        attempts = self.spill.read("attempts", block) or _no_attempts()
        attempt_request = np.searchsorted(requests["request"], attempts.pop("request"))
        first_user = block * self.spill.users_per_block
        capping = CapRequests.of(
            self.scenario,
            self.scenario.models,
            self.catalog,
            self.days,
            request_id=requests["request"],
            t=requests["t"],
            user=requests["user"] - first_user,
            users=min(self.spill.users_per_block, self.mau - first_user),
            request_model=requests["request_model"],
            cost_nanos=requests["cost_nanos"],
            bounds=(requests["has_call"], requests["max_input"], requests["max_output"]),
            attempt_request=attempt_request,
            attempts=attempts,
            first_user=first_user,
        )
        decision, cost, replayed = cap_decisions(capping, self.catalog)
        outcomes = RequestOutcomes(
            requests["request_model"],
            requests["hard"],
            requests["served"],
            requests["quality"],
            requests["ttft_s"],
            requests["fallback"],
        )
        models = figures.models
        shaped = shape(self.scenario, self.catalog, models, decision, outcomes, attempt_request, attempts)
        for model in shaped.models[len(figures.models) :]:
            figures.add_model(model)
        figures.add_requests(
            RequestChunk(
                t=requests["t"],
                user=requests["user"],
                context=requests["context"],
                served=shaped.served,
                fragment_hit=requests["fragment_hit"],
                cost_nanos=cost,
                quality=shaped.quality,
                ttft_s=shaped.ttft_s,
                fallback=shaped.fallback,
                decision=decision,
                uncapped_cost_nanos=requests["cost_nanos"],
                uncapped_quality=requests["quality"],
            )
        )
        figures.add_attempts(shaped.attempts)
        figures.add_users_replayed(replayed)
        if self.usage is not None:
            kept = decision[attempt_request] != CapDecision.DENIED  # the rows `shape` kept, in order
            self.usage(
                of_requests(
                    shaped.models,
                    requests["user"][attempt_request[kept]],
                    {name: shaped.attempts[name] for name in USAGE_ATTEMPT_COLUMNS},
                    requests["user"],
                    requests["t"],
                    shaped.request_model,
                    shaped.served,
                    requests["fragment_calls"],
                )
            )


def _no_attempts() -> dict[str, np.ndarray]:
    """A block's attempt rows when none was spilled (every request answered by a cache)."""
    empty = np.zeros(0, dtype=np.int64)
    return {"request": empty, **{name: empty for name in (*CAP_ATTEMPT_COLUMNS, *USAGE_SPILLED)}}


def cap_carry(scenario: Scenario, traffic: Traffic, local_calls: np.ndarray) -> dict[str, np.ndarray]:
    """Per request of `traffic` (a day's, local ids): the columns the fold must carry for the cap pass --
    `local_calls` are its calls that go to a model."""
    owner = traffic.call_request[local_calls]
    bounds = token_bounds(
        scenario,
        owner,
        traffic.input_tokens[local_calls],
        traffic.output_tokens[local_calls],
        traffic.requests,
    )
    return dict(zip(CAP_CARRY_COLUMNS, bounds, strict=True))
