"""The price catalog: model -> exact per-token prices in integer nano-dollars (1e-9 USD).

Providers list prices in USD per 1 million tokens; a price with at most three decimals is a whole number
of nano-dollars per token (gpt-5-nano cached input: $0.005 / 1M = 5 nano-dollars a token). Every cost is
an integer sum, so millions of costs never drift. A price that is not a whole number of nano-dollars per
token is refused with the reason, never rounded.

A model's price may have tiers by prompt size (Anthropic and Google charge more for every token of a call
whose prompt passes 200k tokens), and it may change over time. A catalog holds the prices in force on one
day (`on`) and, for models whose price changed or will change, their dated history: a usage event is
priced at the price in force at its timestamp (`price_at`). The default catalog is genai-prices' data
(budget/domain/genai_catalog.py, read by budget/domain/catalog.py); `[prices.MODEL]` tables in a
scenario or the caps config override or add models (budget/domain/price_overrides.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from budget.errors import PriceError, UnknownModelError

NANOS_PER_USD = 1_000_000_000
PRICE_FIELDS = ("input", "cached_input", "cache_write", "output")
ALWAYS = date.min  # the start of a model's first known price


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-token prices in nano-dollars: uncached prompt tokens, prompt tokens read from the provider's
    prompt cache, prompt tokens written to it, and output tokens."""

    input: int
    cached_input: int
    cache_write: int
    output: int

    def cost_nanos(
        self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0, cache_write_tokens: int = 0
    ) -> int:
        """Exact cost of one call at these rates. `input_tokens` counts every prompt token, cached or not."""
        uncached = input_tokens - cached_input_tokens - cache_write_tokens
        return (
            uncached * self.input
            + cached_input_tokens * self.cached_input
            + cache_write_tokens * self.cache_write
            + output_tokens * self.output
        )

    @property
    def dearest_input(self) -> int:
        """The most one prompt token can cost (a cache write can cost more than plain input)."""
        return max(self.input, self.cached_input, self.cache_write)


@dataclass(frozen=True, slots=True)
class Tier:
    """Rates for every token of a call whose prompt has more than `above` tokens (cached or not)."""

    above: int
    rates: Rates


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's per-token prices in nano-dollars: the base rates (the fields) and the tiers by prompt
    size, ascending. A call pays the rates of the highest tier its prompt passes, on every token."""

    model: str
    input: int
    cached_input: int
    cache_write: int
    output: int
    tiers: tuple[Tier, ...] = ()

    @property
    def base(self) -> Rates:
        """The rates below the first tier."""
        return Rates(self.input, self.cached_input, self.cache_write, self.output)

    def rates_for(self, prompt_tokens: int) -> Rates:
        """The rates a call with a prompt of `prompt_tokens` tokens pays."""
        for tier in reversed(self.tiers):
            if prompt_tokens > tier.above:
                return tier.rates
        return self.base

    def cost_nanos(
        self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0, cache_write_tokens: int = 0
    ) -> int:
        """Exact cost of one call, at the tier its prompt (`input_tokens`, cached or not) falls in."""
        rates = self.rates_for(input_tokens)
        return rates.cost_nanos(input_tokens, output_tokens, cached_input_tokens, cache_write_tokens)

    def worst_rates(self, max_prompt_tokens: int) -> tuple[int, int]:
        """The dearest (per prompt token, per output token) rates of any tier a prompt of at most
        `max_prompt_tokens` tokens can reach: what a worst case reserves."""
        reachable = [self.base, *(tier.rates for tier in self.tiers if max_prompt_tokens > tier.above)]
        return max(r.dearest_input for r in reachable), max(r.output for r in reachable)


@dataclass(frozen=True, slots=True)
class PriceChange:
    """A model's price from `since` (a UTC day; ALWAYS for its first known price) until the next change."""

    since: date
    price: ModelPrice


def in_force(changes: tuple[PriceChange, ...], day: date) -> ModelPrice:
    """The price of the last change, in the catalog's order, that started by `day` (genai-prices' rule;
    the first price when none has)."""
    price = changes[0].price
    for change in changes:
        if change.since <= day:
            price = change.price
    return price


@dataclass(frozen=True, slots=True)
class CatalogSource:
    """Where a catalog's prices come from: e.g. "genai-prices 0.2.3", and the day its data was published
    (None when margins does not know it)."""

    name: str
    as_of: str | None = None


@dataclass(frozen=True)
class PriceCatalog:
    """Known models' prices: those in force on `on`, every dated change of a model whose price changes,
    and the models whose listed price margins cannot charge exactly (`refused`, with the reason).

    `lookup` finds the listed model another name means (a dated snapshot id such as gpt-4o-2024-08-06, or
    claude-haiku-4.5 for claude-haiku-4-5); `overridden` names the models a `[prices]` table set.
    """

    prices: Mapping[str, ModelPrice]
    source: CatalogSource
    on: date | None = None
    history: Mapping[str, tuple[PriceChange, ...]] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)
    overridden: frozenset[str] = frozenset()
    lookup: Callable[[str], str | None] | None = None
    _resolved: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def resolve(self, model: str) -> str | None:
        """The listed model `model` names (itself when listed), or None."""
        listed = self._looked_up(model)
        return listed if listed is not None and listed in self.prices else None

    def refusal(self, model: str) -> str | None:
        """Why the catalog cannot price `model` exactly, when it lists it at a price margins refuses."""
        listed = self._looked_up(model)
        return self.refused.get(model) or (self.refused.get(listed) if listed is not None else None)

    def _looked_up(self, model: str) -> str | None:
        if model in self.prices or model in self.refused:
            return model
        if model in self._resolved:
            return self._resolved[model]
        listed = self.lookup(model) if self.lookup is not None else None
        if listed is not None:  # only hits are kept: a stream of made-up names cannot grow the memo
            self._resolved[model] = listed
        return listed

    def __getitem__(self, model: str) -> ModelPrice:
        listed = self.resolve(model)
        if listed is None:
            raise self.unknown(model)
        return self.prices[listed]

    def unknown(self, model: str) -> UnknownModelError:
        """The error for a model this catalog cannot price: the closest names, or why it is refused."""
        return UnknownModelError(model, self.closest(model), self.refusal(model))

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.resolve(model) is not None

    @property
    def models(self) -> tuple[str, ...]:
        """Every listed model, sorted."""
        return tuple(sorted(self.prices))

    def closest(self, model: str, n: int = 5) -> tuple[str, ...]:
        """Listed names closest to `model` (for an unknown model's message)."""
        return tuple(difflib.get_close_matches(model, self.prices, n=n, cutoff=0.5))

    def price_at(self, model: str, at: datetime) -> ModelPrice:
        """The model's price in force at `at` (its UTC day): a price change never reprices the past."""
        listed = self.resolve(model)
        if listed is None:
            return self[model]  # raises UnknownModelError
        changes = self.history.get(listed)
        if not changes:
            return self.prices[listed]
        return in_force(changes, at.astimezone(UTC).date() if at.tzinfo is not None else at.date())

    def cost_nanos(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
        at: datetime | None = None,
    ) -> int:
        """Exact cost in nano-dollars at the price in force at `at` (default: on the catalog's day);
        raises UnknownModelError for a model the catalog lacks."""
        price = self[model] if at is None else self.price_at(model, at)
        return price.cost_nanos(input_tokens, output_tokens, cached_input_tokens, cache_write_tokens)

    def provenance(self) -> dict[str, Any]:
        """Which prices these are, for a forecast to say: the catalog (package and version), the day its
        data was published, the day whose prices were applied, and the models a [prices] table set."""
        return {
            "catalog": self.source.name,
            "as_of": self.source.as_of,
            "priced_on": self.on.isoformat() if self.on is not None else None,
            "overridden": sorted(self.overridden),
        }

    def pinned(self) -> PriceCatalog:
        """This catalog with its history dropped: every model at the price in force on `on`, whatever a
        timestamp says (a forecast prices its whole month at one day's prices)."""
        return PriceCatalog(self.prices, self.source, self.on, {}, self.refused, self.overridden, self.lookup)


def usd_per_million_to_nanos(value: object, where: str, field: str) -> int:
    """USD per 1M tokens (a string or number) -> exact nano-dollars per token; never rounded."""
    if isinstance(value, bool):
        raise PriceError(where, field, f"expected a price in USD per 1M tokens, got {value!r}")
    try:
        usd = Decimal(str(value))
    except InvalidOperation:
        raise PriceError(where, field, f"expected a price in USD per 1M tokens, got {value!r}") from None
    if not usd.is_finite() or usd < 0:
        raise PriceError(where, field, f"expected a price >= 0, got {value!r}")
    nanos = usd * 1000  # USD per 1M tokens * 1e9 nanos per USD / 1e6 tokens
    if nanos != nanos.to_integral_value():
        raise PriceError(where, field, f"at most 3 decimals (whole nano-dollars per token), got {value!r}")
    return int(nanos)


def nanos_to_usd(nanos: int) -> float:
    """For display only: money stays in integer nano-dollars everywhere it is summed."""
    return nanos / NANOS_PER_USD


def nanos_to_usd_text(nanos: int) -> str:
    """Exact USD text of a nano-dollar amount (285000 -> "0.000285"; 5e9 -> "5"): never rounded."""
    text = f"{Decimal(nanos).scaleb(-9):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
