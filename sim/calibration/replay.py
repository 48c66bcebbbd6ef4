"""Replay a trace through the cost levers: the same engine and figures as `simulate`, one level = the trace.

Without a policies file the replay is a pass-through: every lever off, no injected failures (error,
timeout and bad-completion rates 0, rate limits out of reach), one model. Its cost is then exactly the
trace's tokens at that model's prices -- the baseline every what-if on this traffic is measured against.
A policies file is applied on top of that pass-through: only what it states changes, so a replay through
an exact cache differs from the pass-through by the cache alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from budget.domain.catalog import default_catalog
from budget.domain.prices import PriceCatalog
from sim.calibration.fit_outcomes import DEFAULT_MODEL, passthrough_provider
from sim.errors import ScenarioError
from sim.io.traces import TraceRows, to_traffic
from sim.model import engine
from sim.model.forecast import Forecast, summarize
from sim.model.run import RunResult
from sim.model.scenario import Scenario
from sim.model.scenario_checks import merge, parse_scenario

__all__ = ["DEFAULT_MODEL", "passthrough_scenario", "policies_scenario", "prompt_cache_figures", "replay"]


def passthrough_scenario(model: str = DEFAULT_MODEL) -> tuple[Scenario, PriceCatalog]:
    """Every lever off, no failures, one model: the trace's own cost."""
    catalog = default_catalog()
    if model not in catalog:
        raise ScenarioError("--model", "model", str(catalog.unknown(model)))
    table: dict[str, Any] = {
        "name": "passthrough",
        "router": {"model": model},
        "providers": {model: passthrough_provider()},
    }
    return parse_scenario(table, "(pass-through)")


def policies_scenario(policies: Mapping[str, Any], where: str) -> tuple[Scenario, PriceCatalog]:
    """The pass-through with only the tables `policies` states on top; `where` names it in errors.

    A scenario file read alone brings every default, among them provider errors, timeouts, bad
    completions and rate limits the trace never had, which would be counted as the levers' doing. Here
    each model the policies call starts from the pass-through provider and changes only in the fields
    the file writes; without a [router], the pass-through's model answers.
    """
    table = merge({"router": {"model": DEFAULT_MODEL}}, policies)
    scenario, _ = parse_scenario(table, where)
    stated: Mapping[str, Any] = policies.get("providers", {})
    providers = {
        model: merge(passthrough_provider(), stated.get(model, {})) for model in _called_models(scenario)
    }
    return parse_scenario(merge(table, {"providers": providers}), where)


def _called_models(scenario: Scenario) -> tuple[str, ...]:
    degrade = scenario.cap.degrade_model if scenario.cap is not None else None
    return (*scenario.models, degrade) if degrade else scenario.models


def replay(
    rows: TraceRows,
    scenario: Scenario,
    catalog: PriceCatalog,
    seed: int = 1,
    on_phase: Callable[[str], object] | None = None,
) -> tuple[RunResult, Forecast]:
    """Run the trace through the scenario's levers; returns the run and its figures as a one-level forecast.

    The trace has no difficulty labels: requests are drawn hard with the scenario's prompts.hard_share
    (this only moves quality and a router's choices, never the pass-through's cost). `on_phase` hears the
    run's phases, as `engine.simulate` tells them.
    """
    hard = np.random.default_rng([seed, rows.requests]).random(rows.requests) < scenario.prompts.hard_share
    traffic = to_traffic(rows, scenario.cache.exact.scope, hard)
    run = engine.simulate(
        scenario, catalog, traffic.mau, traffic.days, seed, traffic=traffic, on_phase=on_phase
    )
    summary = summarize(run)
    name = f"{scenario.name} on {rows.path}"
    runs = [{"replication": 0, **summary}]
    result = Forecast(name, seed, traffic.days, 1, [summary], runs, catalog.provenance())
    return run, result


def prompt_cache_figures(run: RunResult) -> dict[str, float]:
    """How much of the billed input the provider's prompt cache read and wrote (shares of billed input)."""
    billed = int(run.attempts.column("billed_input").sum())
    read = int(run.attempts.column("billed_cached").sum())
    wrote = int(run.attempts.column("billed_write").sum())
    return {
        "cached_input_tokens": read,
        "cache_write_tokens": wrote,
        "cached_input_share": read / billed if billed else 0.0,
        "cache_write_share": wrote / billed if billed else 0.0,
    }
