"""The two ways the simulator can run a scenario, behind one signature: the fast engine
(sim/model/engine.py) and the per-request reference (sim/model/reference.py), the oracle it is checked
against. Tests of what must hold for any correct simulator take either (the `simulator` fixture)."""

from __future__ import annotations

from typing import Protocol

from budget.domain.prices import PriceCatalog
from sim.model.caps import apply_cap
from sim.model.engine import simulate
from sim.model.reference import simulate_reference
from sim.model.run import RunResult
from sim.model.scenario import Scenario


class Simulator(Protocol):
    """Runs a scenario once at `mau` users for `days` days."""

    def __call__(
        self, scenario: Scenario, catalog: PriceCatalog, mau: int, days: int, seed: int
    ) -> RunResult: ...


def reference(scenario: Scenario, catalog: PriceCatalog, mau: int, days: int, seed: int) -> RunResult:
    """The per-request reference, then the scenario's cap, as the fast engine applies it at its end (the
    reference itself models no cap: the cap replays a finished run through the enforcer's ledger)."""
    return apply_cap(simulate_reference(scenario, catalog, mau, days, seed), catalog)


SIMULATORS: dict[str, Simulator] = {"fast": simulate, "reference": reference}
