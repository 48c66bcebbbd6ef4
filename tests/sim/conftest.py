"""Fixtures for the simulator's tests; the scenarios they build on are in tests/sim/scenarios.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from budget.domain.prices import PriceCatalog
from sim.model.scenario import Scenario
from tests.sim.engines import SIMULATORS, Simulator
from tests.sim.scenarios import ALL_LEVERS, scenario_from


@pytest.fixture
def all_levers() -> tuple[Scenario, PriceCatalog]:
    return scenario_from(ALL_LEVERS, "all-levers")


@pytest.fixture(scope="session", autouse=True)
def embedding_cache_of_the_test_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Commands that embed text cache under $XDG_CACHE_HOME: one for the test run, never the user's."""
    root = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(root))
        yield root


@pytest.fixture(params=sorted(SIMULATORS), scope="module")
def simulator(request: pytest.FixtureRequest) -> Simulator:
    """The fast engine, then the per-request reference: for what must hold whichever runs the scenario.
    Module-scoped, so hypothesis may draw many examples against it (it keeps no state)."""
    return SIMULATORS[request.param]
