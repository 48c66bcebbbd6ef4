"""Small scenarios for the simulator's tests, built from plain tables as a TOML file would give them."""

from __future__ import annotations

from typing import Any

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
