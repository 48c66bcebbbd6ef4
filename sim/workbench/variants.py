"""Scenario variants: `--vary KEY=v1,v2` specs, their grid, and each grid point as a validated scenario.

A variant is the base scenario's full table with some dotted keys set, validated by the same
`parse_scenario` as a file, so a bad key or value fails with the same one-line ScenarioError ("unknown
key (did you mean ...); valid keys here: ..."). Values are TOML scalars (`0.85`, `true`, `"naive"`); a
bare word that is not TOML is taken as a string, so `retry.policy=naive,cost-aware` works unquoted.

One derived key exists for convenience: `router.cheap_share` (the share of requests the router sends to
the cheap model) sets `router.easy_to_expensive` from the target share, given `prompts.hard_share` and
`router.hard_to_expensive`, and turns the router on. A share the classifier cannot reach is an error.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from budget.domain.prices import PriceCatalog
from sim.errors import ScenarioError
from sim.model.scenario import Scenario
from sim.model.scenario_checks import parse_scenario

Scalar = bool | int | float | str
CHEAP_SHARE = "router.cheap_share"
RUN_KEYS = {"traffic.mau": "--mau", "traffic.days": "--days"}


@dataclass(frozen=True, slots=True)
class Vary:
    """One `--vary KEY=v1,v2,...`: a dotted scenario key and the values it takes."""

    key: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class Variant:
    """One grid point: its settings (key -> value, in --vary order) and the validated scenario."""

    settings: tuple[tuple[str, Scalar], ...]
    scenario: Scenario
    catalog: PriceCatalog

    def label(self) -> str:
        """ "threshold=0.85, cheap_share=0.7" (the last key component when that is unambiguous)."""
        names = short_names([key for key, _ in self.settings])
        return ", ".join(
            f"{name}={format_value(value)}" for name, (_, value) in zip(names, self.settings, strict=True)
        )


def parse_vary(spec: str) -> Vary:
    """`KEY=v1,v2,...` -> Vary; raises ScenarioError (field "--vary") when it is not of that form."""
    key, sep, rest = spec.partition("=")
    key = key.strip()
    parts = [part.strip() for part in rest.split(",")]
    if not sep or not key or not all(parts) or any(not piece for piece in key.split(".")):
        raise ScenarioError("--vary", spec, "expected KEY=v1,v2,... with a dotted scenario key")
    return Vary(key, tuple(parse_scalar(part) for part in parts))


def parse_scalar(text: str) -> Scalar:
    """A TOML scalar (`0.85`, `3`, `true`, `"x"`); anything else is the text itself."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    if isinstance(value, bool | int | float | str):
        return value
    return text


def format_value(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def short_names(keys: Sequence[str]) -> list[str]:
    """The last component of each key, or the whole key where two would read the same."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return [name if last.count(name) == 1 else key for name, key in zip(last, keys, strict=True)]


def grid(base: Scenario, varies: Sequence[Vary], where: str) -> list[Variant]:
    """Every combination of the varied values (the first --vary outermost), each validated.

    Raises ScenarioError for a key that appears twice, a bad key or a bad value, before anything runs.
    """
    keys = [vary.key for vary in varies]
    for key in keys:
        if keys.count(key) > 1:
            raise ScenarioError("--vary", key, "varied twice; give all its values in one --vary")
        if key in RUN_KEYS:
            # A run's size comes from the command line, so varying it here would silently do nothing.
            raise ScenarioError("--vary", key, f"not a variant setting; use {RUN_KEYS[key]} instead")
    table = msgspec.to_builtins(base)
    combos = itertools.product(*(vary.values for vary in varies)) if varies else [()]
    return [variant_of(table, tuple(zip(keys, combo, strict=True)), where) for combo in combos]


def variant_of(table: Mapping[str, Any], settings: tuple[tuple[str, Scalar], ...], where: str) -> Variant:
    """The base table with `settings` applied, validated like a scenario file."""
    data = _deep_copy(table)
    derived = [(key, value) for key, value in settings if key == CHEAP_SHARE]
    for key, value in settings:
        if key != CHEAP_SHARE:
            set_key(data, key, value, where)
    for _, value in derived:
        _set_cheap_share(data, value, where)
    scenario, catalog = parse_scenario(data, where)
    return Variant(settings, scenario, catalog)


def set_key(data: dict[str, Any], key: str, value: Scalar, where: str) -> None:
    """Set a dotted key, creating tables on the way (a provider or a cap that the base does not set)."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            field = ".".join(parts[: depth + 1])
            raise ScenarioError(where, key, f"{field} is a value, not a table: cannot set {key}")
        node = child
    node[parts[-1]] = value


def _set_cheap_share(data: dict[str, Any], value: Scalar, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(where, CHEAP_SHARE, f"expected a share in [0, 1], got {value!r}")
    share = float(value)
    hard = float(data.get("prompts", {}).get("hard_share", 0.0))
    router = data.setdefault("router", {})
    hard_to_expensive = float(router.get("hard_to_expensive", 0.0))
    # cheap share = 1 - hard * hard_to_expensive - (1 - hard) * easy_to_expensive, easy_to_expensive in
    # [0, 1]: the classifier's measured hard-request behaviour bounds what the easy side can reach.
    low, high = hard * (1.0 - hard_to_expensive), 1.0 - hard * hard_to_expensive
    if not low - 1e-12 <= share <= high + 1e-12 or hard >= 1.0:
        raise ScenarioError(
            where,
            CHEAP_SHARE,
            f"{share} is unreachable with prompts.hard_share = {hard} and router.hard_to_expensive = "
            f"{hard_to_expensive}: reachable shares are {low:.4g} to {high:.4g}",
        )
    router["enabled"] = True
    router["easy_to_expensive"] = min(1.0, max(0.0, (1.0 - share - hard * hard_to_expensive) / (1.0 - hard)))


def _deep_copy(table: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deep_copy(value) if isinstance(value, Mapping) else value for key, value in table.items()}
