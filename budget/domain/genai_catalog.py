"""The default price catalog: the data of genai-prices (pydantic/genai-prices, MIT), in exact nano-dollars.

genai-prices tracks providers' list prices and their history; each release bundles a snapshot of them.
margins reads the models of PROVIDERS (first party first: a Claude model is Anthropic's price, not
Vertex's copy), with their tiers by prompt size and their dated price changes, and charges the standard
rates for text tokens: input, cache reads (cached input), cache writes (5-minute writes where a provider
bills them; otherwise the input price) and output. Batch, flex and priority variants, 1-hour cache writes,
audio, images and web searches are not charged.

A model is refused, with the reason, when its price cannot be charged exactly per text token: a price
that is not a whole number of nano-dollars per token (margins never rounds one), no per-token input and
output price (audio, images, characters), or a price by time of day. A `[prices.MODEL]` table prices it.

genai-prices can also fetch newer data at run time (its UpdatePrices); margins never does: a catalog is the
installed package's snapshot, named by its version, so a run can say which prices it used.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import genai_prices
from genai_prices import data, types

from budget.domain.prices import (
    ALWAYS,
    CatalogSource,
    ModelPrice,
    PriceCatalog,
    PriceChange,
    Rates,
    Tier,
    in_force,
)
from budget.errors import PriceRefused

PROVIDERS = ("openai", "anthropic", "google")
# The day each genai-prices release margins was tested with was published (the package does not carry
# its data's date). tests/budget/test_prices.py checks the locked version against uv.lock.
RELEASED = {"0.2.3": "2026-11-10"}
# margins' price field -> genai-prices' price key; a missing cache price falls back to the input price.
PRICE_KEYS = {
    "input": "input_mtok",
    "cached_input": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
    "output": "output_mtok",
}


def catalog_source() -> CatalogSource:
    """The installed genai-prices: its version and the day it was published (when margins knows it)."""
    version = genai_prices.__version__
    return CatalogSource(f"genai-prices {version}", RELEASED.get(version))


def read_catalog(on: date) -> PriceCatalog:
    """The catalog of PROVIDERS' models at the prices in force on `on`, with every model's history."""
    prices: dict[str, ModelPrice] = {}
    history: dict[str, tuple[PriceChange, ...]] = {}
    refused: dict[str, str] = {}
    for provider in _providers():
        for model in provider.models:
            if model.id in prices or model.id in refused:
                continue
            try:
                changes = model_history(model)
            except PriceRefused as why:
                refused[model.id] = why.reason
                continue
            prices[model.id] = in_force(changes, on)
            if len(changes) > 1:
                history[model.id] = changes
    return PriceCatalog(prices, catalog_source(), on, history, refused, frozenset(), Lookup(PROVIDERS))


def _providers() -> list[types.Provider]:
    by_id = {provider.id: provider for provider in data.providers}
    return [by_id[provider_id] for provider_id in PROVIDERS if provider_id in by_id]


class Lookup:
    """The catalog's own matching of a model name (dated ids, other spellings) to a model id, provider by
    provider in PROVIDERS' order. Pickled by provider ids, so a catalog travels to worker processes."""

    def __init__(self, provider_ids: tuple[str, ...]) -> None:
        self.provider_ids = provider_ids
        by_id = {provider.id: provider for provider in data.providers}
        self.providers = [by_id[p] for p in provider_ids if p in by_id]

    def __call__(self, name: str) -> str | None:
        for provider in self.providers:
            model = provider.find_model(name)
            if model is not None:
                return model.id
        return None

    def __reduce__(self) -> tuple[type[Lookup], tuple[tuple[str, ...]]]:
        return (Lookup, (self.provider_ids,))


def model_history(model: types.ModelInfo) -> tuple[PriceChange, ...]:
    """Every price of a model with the day it starts, in the catalog's order; raises PriceRefused."""
    if isinstance(model.prices, types.ModelPrice):
        return (PriceChange(ALWAYS, convert(model.id, model.prices)),)
    changes = []
    for conditional in model.prices:
        constraint = conditional.constraint
        if constraint is None:
            since = ALWAYS
        elif isinstance(constraint, types.StartDateConstraint):
            since = constraint.start_date
        else:
            raise PriceRefused(
                model.id, "the catalog prices it by time of day; margins charges one price a day"
            )
        changes.append(PriceChange(since, convert(model.id, conditional.prices)))
    return tuple(changes)


def convert(model: str, price: types.ModelPrice) -> ModelPrice:
    """genai-prices' prices of a model (USD per 1M tokens, flat or tiered) in nano-dollars per token."""
    values: dict[str, Decimal | types.TieredPrices] = {}
    for name, key in PRICE_KEYS.items():
        value = getattr(price, key, None)
        if value is not None:
            values[name] = value
    if "input" not in values or "output" not in values:
        raise PriceRefused(model, "the catalog lists no per-token price for its input and output text tokens")
    starts = sorted(
        {
            tier.start
            for value in values.values()
            if isinstance(value, types.TieredPrices)
            for tier in value.tiers
        }
    )
    base = _rates(model, values, None)
    tiers = tuple(Tier(start, _rates(model, values, start)) for start in starts)
    return ModelPrice(model, base.input, base.cached_input, base.cache_write, base.output, tiers)


def _rates(model: str, values: dict[str, Decimal | types.TieredPrices], above: int | None) -> Rates:
    """The rates for a prompt of just over `above` tokens (None: below every tier)."""
    usd = {name: _at(value, above) for name, value in values.items()}
    usd.setdefault("cached_input", usd["input"])
    usd.setdefault("cache_write", usd["input"])
    return Rates(**{name: _whole_nanos(model, name, usd[name], above) for name in PRICE_KEYS})


def _at(value: Decimal | types.TieredPrices, above: int | None) -> Decimal:
    if not isinstance(value, types.TieredPrices):
        return value
    price = value.base
    for tier in value.tiers:  # a tier applies to prompts of more than `start` tokens
        if above is not None and tier.start <= above:
            price = tier.price
    return price


def _whole_nanos(model: str, name: str, usd_per_million: Decimal, above: int | None) -> int:
    nanos = usd_per_million * 1000  # USD per 1M tokens -> nano-dollars per token
    if nanos != nanos.to_integral_value():
        where = "" if above is None else f" for prompts above {above:,} tokens"
        raise PriceRefused(
            model,
            f"the catalog's {name.replace('_', ' ')} price{where}, ${usd_per_million} per 1M tokens, is not "
            f"a whole number of nano-dollars per token and margins never rounds a price: give it in "
            f"[prices.{model}]",
        )
    return int(nanos)
