"""Fixtures for the simulator's tests; the scenarios they build on are in tests/sim/scenarios.py."""

from __future__ import annotations

import pytest

from budget.domain.prices import PriceCatalog
from sim.model.scenario import Scenario
from tests.sim.engines import SIMULATORS, Simulator
from tests.sim.scenarios import ALL_LEVERS, scenario_from


@pytest.fixture
def all_levers() -> tuple[Scenario, PriceCatalog]:
    return scenario_from(ALL_LEVERS, "all-levers")


@pytest.fixture(params=sorted(SIMULATORS), scope="module")
def simulator(request: pytest.FixtureRequest) -> Simulator:
    """The fast engine, then the per-request reference: for what must hold whichever runs the scenario.
    Module-scoped, so hypothesis may draw many examples against it (it keeps no state)."""
    return SIMULATORS[request.param]
