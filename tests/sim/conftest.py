"""Helpers shared by the simulator tests: small scenarios built from tables, run fast."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from budget.domain.prices import PriceCatalog
from sim.model.scenario import Scenario
from sim.model.scenario_checks import parse_scenario


def scenario_from(table: dict[str, Any], name: str = "test") -> tuple[Scenario, PriceCatalog]:
    """A validated scenario from a plain table (as a TOML file would give it)."""
    return parse_scenario({"name": name, **table}, f"{name}.toml")


ALL_LEVERS: dict[str, Any] = {
    "prompts": {"chains": {"share": 0.3, "steps": 3, "deterministic_steps": 2}},
    "cache": {
        "exact": {"enabled": True},
        "semantic": {"enabled": True, "threshold": 0.85},
        "fragment": {"enabled": True},
    },
    "router": {"enabled": True, "cheap_model": "gpt-4o-mini", "expensive_model": "gpt-4o"},
    "retry": {"policy": "cost-aware"},
    "streaming": {"enabled": True},
}


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
