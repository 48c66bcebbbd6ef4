"""A cap's decisions applied to requests and their attempts: what sim/model/caps.py's ledger decided,
turned into the run's (or a block of users') served codes, qualities, TTFTs and attempt rows.

One implementation for the whole-run engine (`caps.apply_cap`) and the streaming engine's pass over
blocks of users (sim/model/cap_pass.py). Stated simplifications (caps.py): a degraded request keeps its
attempts, repriced at the degrade model and scored at its quality; a denied request's attempts are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from budget.domain.prices import PriceCatalog
from sim.model.codes import CapDecision, Outcome, Served
from sim.model.scenario import Scenario


@dataclass(frozen=True, slots=True)
class Shaped:
    """Some requests and their attempt rows as the cap's decisions leave them.

    `models` gains the cap's degrade model when one of these requests was degraded to it and it was not
    among them; `attempts` holds only the kept rows (a denied request's are dropped), a degraded request's
    rows moved to the degrade model (and repriced there when they carry `cost_nanos`)."""

    models: tuple[str, ...]
    request_model: np.ndarray
    served: np.ndarray
    quality: np.ndarray
    ttft_s: np.ndarray
    fallback: np.ndarray
    attempts: dict[str, np.ndarray]


def shape(
    scenario: Scenario,
    catalog: PriceCatalog,
    models: tuple[str, ...],
    decision: np.ndarray,
    outcomes: RequestOutcomes,
    attempt_request: np.ndarray,
    attempts: dict[str, np.ndarray],
) -> Shaped:
    """Apply the cap's decisions to requests (`outcomes`, without the cap) and their attempt rows
    (`attempt_request`: each row's request; `attempts`: columns, `outcome` among them)."""
    denied, degraded = decision == CapDecision.DENIED, decision == CapDecision.DEGRADED
    request_model = outcomes.request_model.copy()
    outcome = attempts["outcome"].astype(np.int64)
    served_bad = np.zeros(decision.size, dtype=bool)
    served_bad[attempt_request[outcome == Outcome.BAD_SERVED]] = True
    quality = outcomes.quality.copy()
    columns = dict(attempts)
    if degraded.any():
        cheaper = scenario.cap.degrade_model if scenario.cap else None
        assert cheaper is not None  # the ledger degrades only to the plan's degrade_model
        if cheaper not in models:
            models = (*models, cheaper)
        index = models.index(cheaper)
        request_model[degraded] = index
        answered = degraded & (outcomes.served == Served.MODEL) & ~served_bad
        scores = scenario.quality_of(cheaper)
        quality[answered] = np.where(outcomes.hard[answered], scores.hard, scores.easy)
        moved = degraded[attempt_request]
        columns["model"] = np.where(moved, index, columns["model"])
        if "cost_nanos" in columns:
            price = catalog[cheaper]
            columns["cost_nanos"] = np.where(
                moved,
                columns["billed_input"] * price.input + columns["billed_output"] * price.output,
                columns["cost_nanos"],
            )
    quality[denied] = scenario.quality.denied
    kept = ~denied[attempt_request]
    return Shaped(
        models=models,
        request_model=request_model,
        served=np.where(denied, Served.DENIED, outcomes.served),
        quality=quality,
        ttft_s=np.where(denied, np.nan, outcomes.ttft_s),
        fallback=outcomes.fallback & ~denied,
        attempts={name: values[kept] for name, values in columns.items()},
    )


@dataclass(frozen=True, slots=True)
class RequestOutcomes:
    """What `shape` changes of some requests, as the run made them without the cap."""

    request_model: np.ndarray
    hard: np.ndarray
    served: np.ndarray
    quality: np.ndarray
    ttft_s: np.ndarray
    fallback: np.ndarray
