"""Checking a scenario table: unknown keys, error messages, cross-field rules, then the frozen Scenario.

sim/model/scenario.py holds the schema and its defaults; this module turns an already-read table into it,
so that every error names the file, the field and what was expected (sim/io/scenarios.py reads files).
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from budget.domain.catalog import default_catalog
from budget.domain.price_overrides import with_overrides
from budget.domain.prices import PriceCatalog
from budget.errors import PriceError
from sim.errors import ScenarioError
from sim.model.scenario import Cap, ModelQuality, Prompts, Provider, Scenario


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, tables merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def check_entries(
    data: Mapping[str, Any], where: str, provider: type[msgspec.Struct], model_quality: type[msgspec.Struct]
) -> None:
    """Validate per-model tables one entry at a time, so an error names the model (msgspec says `[...]`)."""
    quality = data.get("quality")
    sections: list[tuple[str, Any, type[msgspec.Struct]]] = [("providers", data.get("providers"), provider)]
    if isinstance(quality, Mapping):
        sections.append(("quality.models", quality.get("models"), model_quality))
    for section, table, struct in sections:
        if not isinstance(table, Mapping):
            continue
        for model, entry in table.items():
            try:
                msgspec.convert(entry, struct)
            except msgspec.ValidationError as error:
                raise translate(error, where, f"{section}.{model}") from None


_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]+)`")


def translate(error: msgspec.ValidationError, where: str, prefix: str) -> ScenarioError:
    """msgspec's message ("Expected ... - at `$.cache.semantic.threshold`") as file, field, reason."""
    reason, _, at = str(error).partition(" - at `$")
    path = at.rstrip("`").replace("[", ".").replace("]", "")
    missing = _MISSING.match(reason)
    if missing:
        path, reason = f"{path}.{missing['name']}", "missing; this field is required"
    field = f"{prefix}{path}".lstrip(".") or "(file)"
    return ScenarioError(where, field, reason.replace("Expected", "expected"))


def check_keys(data: Any, struct: Any, where: str, prefix: str) -> None:
    """Reject unknown keys with the valid ones and a close match: typos are the common mistake."""
    if not isinstance(data, Mapping) or not isinstance(struct, type):
        return
    if not issubclass(struct, msgspec.Struct):
        return
    hints = typing.get_type_hints(struct, include_extras=True)
    for key, value in data.items():
        field = f"{prefix}{key}"
        if key not in struct.__struct_fields__:
            valid = sorted(struct.__struct_fields__)
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ScenarioError(where, field, f"unknown key{hint}; valid keys here: {', '.join(valid)}")
        _check_nested(value, hints[key], where, field)


def _check_nested(value: Any, hint: Any, where: str, field: str) -> None:
    for inner in _struct_types(hint):
        check_keys(value, inner, where, field + ".")
    origin = typing.get_origin(_strip(hint))
    if origin is dict and isinstance(value, Mapping):
        value_type = typing.get_args(_strip(hint))[1]
        for key, item in value.items():
            _check_nested(item, value_type, where, f"{field}.{key}")
    if origin is list and isinstance(value, list):
        item_type = typing.get_args(_strip(hint))[0]
        for index, item in enumerate(value):
            _check_nested(item, item_type, where, f"{field}.{index}")


def _strip(hint: Any) -> Any:
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def _struct_types(hint: Any) -> list[type]:
    hint = _strip(hint)
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return [hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [
            arg for arg in typing.get_args(hint) if isinstance(arg, type) and issubclass(arg, msgspec.Struct)
        ]
    return []


def check_semantics(scenario: Scenario, catalog: PriceCatalog, where: str) -> None:
    """Cross-field rules that a type alone cannot say."""
    router = scenario.router
    model_fields = (
        [("router.cheap_model", router.cheap_model), ("router.expensive_model", router.expensive_model)]
        if router.enabled
        else [("router.model", router.model)]
    )
    for field, model in model_fields:
        if model not in catalog:
            raise ScenarioError(where, field, f"{catalog.unknown(model)} (or add [prices.{model}])")
    for section in ("providers", "quality.models"):
        table = scenario.providers if section == "providers" else scenario.quality.models
        for model in table:
            if model not in catalog:
                raise ScenarioError(where, f"{section}.{model}", str(catalog.unknown(model)))
    prompts = scenario.prompts
    if prompts.repeat_share + prompts.paraphrase_share > 1.0:
        raise ScenarioError(where, "prompts.paraphrase_share", "repeat_share + paraphrase_share must be <= 1")
    if prompts.chains.deterministic_steps > prompts.chains.steps:
        raise ScenarioError(
            where, "prompts.chains.deterministic_steps", "expected at most prompts.chains.steps"
        )
    _check_context(prompts, where)
    traffic = scenario.traffic
    if len(traffic.diurnal) != 24 or sum(traffic.diurnal) <= 0:
        raise ScenarioError(where, "traffic.diurnal", "expected 24 hourly weights >= 0, not all zero")
    if traffic.sessions_per_user_month < 1.0:
        raise ScenarioError(
            where, "traffic.sessions_per_user_month", "expected >= 1 (an active user has a session)"
        )
    _check_date(traffic.start, where)
    _check_cap(scenario.cap, catalog, where)
    _check_flat_prices_under_cap(scenario, catalog, where)
    _check_profile(scenario.cache.semantic.profile, where)


def _check_context(prompts: Prompts, where: str) -> None:
    context = prompts.context
    if not context.active:
        return
    if prompts.prefix_share > 0:
        raise ScenarioError(
            where,
            "prompts.prefix_share",
            "expected 0 with [prompts.context]: its system prompt and history are the cacheable prefix",
        )
    if context.system_tokens >= context.max_tokens:
        raise ScenarioError(
            where,
            "prompts.context.system_tokens",
            f"expected fewer than prompts.context.max_tokens ({context.max_tokens:,}): a turn must fit",
        )
    if (
        context.at_limit == "summarize"
        and context.system_tokens + context.summary_tokens >= context.max_tokens
    ):
        raise ScenarioError(
            where,
            "prompts.context.summary_tokens",
            "expected system_tokens + summary_tokens below prompts.context.max_tokens "
            f"({context.system_tokens:,} + {context.summary_tokens:,} >= {context.max_tokens:,})",
        )


def _check_cap(cap: Cap | None, catalog: PriceCatalog, where: str) -> None:
    if cap is None:
        return
    if cap.action == "degrade" and cap.degrade_model is None:
        raise ScenarioError(where, "cap.degrade_model", 'action = "degrade" needs a degrade_model')
    if cap.degrade_model is not None and cap.degrade_model not in catalog:
        raise ScenarioError(where, "cap.degrade_model", str(catalog.unknown(cap.degrade_model)))


def _check_flat_prices_under_cap(scenario: Scenario, catalog: PriceCatalog, where: str) -> None:
    """A capped forecast settles each request's calls as one usage, whose prompt is their sum: a price by
    prompt size cannot be charged that way, so it is refused rather than charged at the wrong tier."""
    cap = scenario.cap
    if cap is None:
        return
    for model in (*scenario.models, *([cap.degrade_model] if cap.degrade_model else [])):
        tiers = catalog[model].tiers
        if tiers:
            raise ScenarioError(
                where,
                "cap",
                f"model {model!r} is priced by prompt size (dearer above {tiers[0].above:,} prompt tokens), "
                f"which a forecast with a cap cannot charge yet: use a model without tiers or give "
                f"[prices.{model}] tiers = []",
            )


def _check_date(text: str, where: str) -> None:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise ScenarioError(where, "traffic.start", f"expected a date YYYY-MM-DD, got {text!r}") from None


def _check_profile(profile: list[list[float]], where: str) -> None:
    if not profile or any(len(row) != 3 for row in profile):
        raise ScenarioError(
            where, "cache.semantic.profile", "expected rows of [threshold, true_hit, false_hit]"
        )
    thresholds = [row[0] for row in profile]
    if thresholds != sorted(thresholds) or len(set(thresholds)) != len(thresholds):
        raise ScenarioError(where, "cache.semantic.profile", "expected thresholds in ascending order")


def parse_scenario(data: Mapping[str, Any], where: str) -> tuple[Scenario, PriceCatalog]:
    """Validate an already-parsed scenario table; `where` names it in errors."""
    check_keys(data, Scenario, where, "")
    check_entries(data, where, Provider, ModelQuality)
    try:
        scenario = msgspec.convert(data, Scenario)
    except msgspec.ValidationError as error:
        raise translate(error, where, "") from None
    if not scenario.name:
        scenario = msgspec.structs.replace(scenario, name=Path(where).stem)
    try:
        # A forecast prices its whole month at today's prices, whatever its dates say.
        catalog = with_overrides(default_catalog(), scenario.prices, "prices").pinned()
    except PriceError as error:
        raise ScenarioError(where, f"{error.where}.{error.field}", error.reason) from None
    check_semantics(scenario, catalog, where)
    return scenario, catalog
