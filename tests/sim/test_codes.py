"""The code families: what the arrays of a run may hold, and how codes become UsageRecorded fields."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, get_args

import numpy as np
import pytest

from budget.domain.events import CacheLayer as UsageCacheLayer
from budget.domain.events import Outcome as UsageOutcome
from sim.calibration.semantic import ProbeKind
from sim.model.codes import (
    CACHE_ANSWERS,
    LAYER_OF_SERVED,
    Action,
    CacheLayer,
    CapDecision,
    Outcome,
    Route,
    Served,
)
from sim.model.engine import simulate
from sim.model.randomness import Draw
from tests.sim.scenarios import scenario_from

FAMILIES = (Outcome, Action, Served, CapDecision, Route, CacheLayer, Draw, ProbeKind)


@pytest.mark.parametrize("family", FAMILIES, ids=[f.__name__ for f in FAMILIES])
def test_every_family_fits_int8(family: type[IntEnum]) -> None:
    """Arrays keep codes as int8: a member outside its range would wrap silently."""
    info = np.iinfo(np.int8)
    assert all(info.min <= member <= info.max for member in family)
    assert np.array_equal(np.array(list(family), dtype=np.int8), [int(m) for m in family])


def test_usage_outcomes_cover_the_event_model() -> None:
    """Every attempt outcome names a UsageRecorded outcome; with cache hits they are all of them."""
    names = {outcome: outcome.usage_outcome for outcome in Outcome}
    assert set(names.values()) | {"cache_hit"} == set(get_args(UsageOutcome))
    assert names[Outcome.BAD] == "aborted" and names[Outcome.BAD_SERVED] == "ok"


def test_usage_layers_cover_the_event_model() -> None:
    layers = [layer.usage_layer for layer in CacheLayer]
    assert layers[0] is None and CacheLayer.NONE.usage_layer is None
    assert set(layers[1:]) == set(get_args(UsageCacheLayer))


def test_cache_answers_are_the_served_codes_a_layer_gives() -> None:
    assert set(CACHE_ANSWERS) == {Served.EXACT, Served.SEMANTIC, Served.FALSE_HIT} == set(LAYER_OF_SERVED)
    assert {LAYER_OF_SERVED[s] for s in CACHE_ANSWERS} == {CacheLayer.EXACT, CacheLayer.SEMANTIC}


def test_a_run_holds_only_known_codes_in_compact_arrays() -> None:
    failing = {"error_rate": 0.1, "timeout_rate": 0.05, "bad_completion_rate": 0.1, "rpm": 2}
    table: dict[str, Any] = {
        "cache": {"exact": {"enabled": True}, "semantic": {"enabled": True}},
        "router": {"enabled": True},
        "retry": {"policy": "cost-aware", "queue_windows": 1},  # a short wait: some calls give up
        "providers": {"gpt-4o": failing, "gpt-4o-mini": failing},
    }
    scenario, catalog = scenario_from(table)
    run = simulate(scenario, catalog, 200, 3, seed=2)
    outcome, action = run.attempts.column("outcome"), run.attempts.column("action")
    assert outcome.dtype == action.dtype == np.int8
    assert set(np.unique(outcome).tolist()) == set(Outcome)  # the failures above make every outcome
    assert set(np.unique(action).tolist()) == set(Action)
    assert set(np.unique(run.served).tolist()) <= set(Served)
    assert set(np.unique(run.request_model).tolist()) == set(Route)
