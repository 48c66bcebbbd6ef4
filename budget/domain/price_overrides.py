"""`[prices.MODEL]` tables: a negotiated rate, a fine-tune, a deployment name, on top of the catalog.

Prices are USD per 1M tokens, at most three decimals (whole nano-dollars per token):

```toml
[prices.gpt-4o]                 # a negotiated rate: the fields not named keep the catalog's
input = "2.00"

[prices.my-finetune]            # a model the catalog lacks: input and output are needed
input = "0.30"                  # cached_input and cache_write default to input
output = "1.20"

[prices.support-bot]            # a deployment name billed as a catalog model, with its tiers
like = "claude-sonnet-4.5"

[prices.long-context]           # tiers by prompt size: every token of a call whose prompt has more
input = "3.00"                  # than `above` tokens pays that tier's rates
output = "15.00"
tiers = [{above = 200000, input = "6.00", output = "22.50"}]
```

An override is in force at all times: the catalog's history of that model no longer applies. It keeps the
catalog's tiers unless it lists its own (`tiers = []`: none). A name the catalog knows under another id
(claude-haiku-4.5 for claude-haiku-4-5) overrides that model, so every name of it is charged alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from budget.domain.prices import PRICE_FIELDS, ModelPrice, PriceCatalog, Rates, Tier, usd_per_million_to_nanos
from budget.errors import PriceError

OVERRIDE_FIELDS = (*PRICE_FIELDS, "tiers", "like")
TIER_FIELDS = ("above", *PRICE_FIELDS)


def with_overrides(catalog: PriceCatalog, overrides: Mapping[str, Any], where: str) -> PriceCatalog:
    """`catalog` with each model of `overrides` replaced or added (USD per 1M tokens per field); errors
    name `where`.MODEL.field, e.g. prices.gpt-4o.input."""
    prices = dict(catalog.prices)
    history = dict(catalog.history)
    refused = dict(catalog.refused)
    overridden = set(catalog.overridden)
    for name, fields in overrides.items():
        here = f"{where}.{name}"
        if not isinstance(fields, Mapping):
            raise PriceError(
                where, name, "expected a table of prices (input, output, ... in USD per 1M tokens)"
            )
        target = catalog.resolve(name) or name
        price = parse_model_price(target, fields, here, _base(catalog, target, fields, here))
        prices[target] = price
        history.pop(target, None)
        refused.pop(target, None)
        overridden.add(target)
    return PriceCatalog(
        prices, catalog.source, catalog.on, history, refused, frozenset(overridden), catalog.lookup
    )


def _base(catalog: PriceCatalog, target: str, fields: Mapping[str, Any], where: str) -> ModelPrice | None:
    """The price an override starts from: the model it is `like`, else the catalog's own, else none."""
    like = fields.get("like")
    if like is None:
        return catalog.prices.get(target)
    if not isinstance(like, str) or like not in catalog:
        closest = catalog.closest(str(like))
        hint = f"; closest: {', '.join(closest)}" if closest else ""
        raise PriceError(where, "like", f"expected a model of the price catalog, got {like!r}{hint}")
    return catalog[like]


def parse_model_price(
    model: str, fields: Mapping[str, Any], where: str, base: ModelPrice | None = None
) -> ModelPrice:
    """Validate one model's price table (USD per 1M tokens) into a ModelPrice.

    With a `base`, fields not named keep its values; without one, input and output are needed and
    cached_input and cache_write default to input.
    """
    unknown = sorted(set(fields) - set(OVERRIDE_FIELDS))
    if unknown:
        raise PriceError(where, unknown[0], f"unknown field; expected one of {', '.join(OVERRIDE_FIELDS)}")
    rates = _rates(fields, where, base.base if base is not None else None, "")
    tiers = base.tiers if base is not None else ()
    if "tiers" in fields:
        tiers = _tiers(fields["tiers"], where)
    return ModelPrice(model, rates.input, rates.cached_input, rates.cache_write, rates.output, tiers)


def _rates(fields: Mapping[str, Any], where: str, base: Rates | None, prefix: str) -> Rates:
    """Named fields in nano-dollars; the others from `base`, or without one from the named input."""
    if base is None:
        for required in ("input", "output"):
            if required not in fields:
                raise PriceError(where, prefix + required, "missing; a price needs input and output")
    nanos = {}
    for name in PRICE_FIELDS:
        if name in fields:
            nanos[name] = usd_per_million_to_nanos(fields[name], where, prefix + name)
        elif base is not None:
            nanos[name] = getattr(base, name)
        else:  # cached_input and cache_write of a new price: the input price (no discount, no surcharge)
            nanos[name] = usd_per_million_to_nanos(fields["input"], where, prefix + "input")
    return Rates(**nanos)


def _tiers(value: object, where: str) -> tuple[Tier, ...]:
    if not isinstance(value, list):
        raise PriceError(
            where, "tiers", "expected a list of tables: [{above = 200000, input = ..., output = ...}]"
        )
    tiers: list[Tier] = []
    for index, table in enumerate(value):
        prefix = f"tiers[{index}]."
        if not isinstance(table, Mapping):
            raise PriceError(where, f"tiers[{index}]", "expected a table with above, input and output")
        unknown = sorted(set(table) - set(TIER_FIELDS))
        if unknown:
            raise PriceError(
                where, prefix + unknown[0], f"unknown field; expected one of {', '.join(TIER_FIELDS)}"
            )
        above = table.get("above")
        if isinstance(above, bool) or not isinstance(above, int) or above < 0:
            raise PriceError(
                where, prefix + "above", f"expected a whole number of prompt tokens >= 0, got {above!r}"
            )
        if tiers and above <= tiers[-1].above:
            raise PriceError(where, prefix + "above", "tiers must be listed by ascending prompt size")
        tiers.append(Tier(above, _rates(table, where, None, prefix)))
    return tuple(tiers)
