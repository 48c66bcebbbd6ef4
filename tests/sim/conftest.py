"""Fixtures for the simulator's tests; the scenarios they build on are in tests/sim/scenarios.py."""

from __future__ import annotations

import pytest

from budget.domain.prices import PriceCatalog
from sim.model.scenario import Scenario
from tests.sim.scenarios import ALL_LEVERS, scenario_from


@pytest.fixture
def all_levers() -> tuple[Scenario, PriceCatalog]:
    return scenario_from(ALL_LEVERS, "all-levers")
