"""The price catalog: model -> exact per-token prices in integer nano-dollars (1e-9 USD).

Providers list prices in USD per 1 million tokens with at most three decimals, so a per-token price is a
whole number of nano-dollars (gpt-5-nano cached input: $0.005 / 1M = 5 nano-dollars a token). Keeping it
integral makes every cost exact: a sum of millions of costs never drifts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

from budget.errors import PriceError, UnknownModelError

NANOS_PER_USD = 1_000_000_000
PRICE_FIELDS = ("input", "cached_input", "cache_write", "output")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Per-token prices of one model, in nano-dollars."""

    model: str
    input: int
    cached_input: int
    cache_write: int
    output: int

    def cost_nanos(
        self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0, cache_write_tokens: int = 0
    ) -> int:
        """Exact cost of one call. `input_tokens` counts every prompt token, cached or not."""
        uncached = input_tokens - cached_input_tokens - cache_write_tokens
        return (
            uncached * self.input
            + cached_input_tokens * self.cached_input
            + cache_write_tokens * self.cache_write
            + output_tokens * self.output
        )


@dataclass(frozen=True, slots=True)
class PriceCatalog:
    """All known models' prices and the date they were read."""

    prices: Mapping[str, ModelPrice]
    read_on: str

    def __getitem__(self, model: str) -> ModelPrice:
        try:
            return self.prices[model]
        except KeyError:
            raise UnknownModelError(model, self.models) from None

    def __contains__(self, model: object) -> bool:
        return model in self.prices

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(sorted(self.prices))

    def cost_nanos(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> int:
        """Exact cost in nano-dollars; raises UnknownModelError for a model the catalog lacks."""
        return self[model].cost_nanos(input_tokens, output_tokens, cached_input_tokens, cache_write_tokens)

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]], where: str) -> PriceCatalog:
        """A new catalog where each named model is replaced or added (USD per 1M tokens per field).

        `where` names the overriding table in errors (e.g. "prices").

        A partial override keeps the fields it does not name; a new model must name input and output
        (cached_input and cache_write default to input).
        """
        prices = dict(self.prices)
        for model, fields in overrides.items():
            base = prices.get(model)
            merged: dict[str, Any] = {}
            if base is not None:
                merged = {name: _nanos_to_usd_per_million(getattr(base, name)) for name in PRICE_FIELDS}
            merged.update(fields)
            prices[model] = parse_model_price(model, merged, f"{where}.{model}")
        return PriceCatalog(prices=prices, read_on=self.read_on)


def usd_per_million_to_nanos(value: object, where: str, field: str) -> int:
    """USD per 1M tokens (a string or number) -> exact nano-dollars per token."""
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


def _nanos_to_usd_per_million(nanos: int) -> str:
    return str(Decimal(nanos) / 1000)


def parse_model_price(model: str, fields: Mapping[str, Any], where: str) -> ModelPrice:
    """Validate one model's price table (USD per 1M tokens) into a ModelPrice."""
    unknown = sorted(set(fields) - set(PRICE_FIELDS))
    if unknown:
        raise PriceError(where, unknown[0], f"unknown field; expected one of {', '.join(PRICE_FIELDS)}")
    for required in ("input", "output"):
        if required not in fields:
            raise PriceError(where, required, "missing; a model's price needs input and output")
    nanos = {name: usd_per_million_to_nanos(fields[name], where, name) for name in ("input", "output")}
    for name in ("cached_input", "cache_write"):
        nanos[name] = usd_per_million_to_nanos(fields.get(name, fields["input"]), where, name)
    return ModelPrice(model=model, **nanos)


def load_catalog(text: str, where: str) -> PriceCatalog:
    """Parse a price file's TOML text; errors name `where` and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PriceError(where, "(file)", f"not valid TOML: {error}") from None
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise PriceError(where, "models", "expected a table of models")
    prices = {
        name: parse_model_price(name, fields, f"{where}: models.{name}") for name, fields in models.items()
    }
    return PriceCatalog(prices=prices, read_on=str(data.get("prices_read_on", "unknown")))


_DEFAULT: PriceCatalog | None = None


def default_catalog() -> PriceCatalog:
    """The catalog shipped with margins (budget/domain/prices.toml), parsed once."""
    global _DEFAULT
    if _DEFAULT is None:
        text = resources.files("budget.domain").joinpath("prices.toml").read_text(encoding="utf-8")
        _DEFAULT = load_catalog(text, "budget/domain/prices.toml")
    return _DEFAULT


def nanos_to_usd(nanos: int) -> float:
    """For display only: money stays in integer nano-dollars everywhere it is summed."""
    return nanos / NANOS_PER_USD
