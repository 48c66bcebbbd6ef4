"""A run's prices as arrays: one row of per-token prices (nano-dollars) per model and prompt-size tier.

A call pays the rates of the tier its prompt falls in, on every token (budget.domain.prices.ModelPrice):
each call gets its price row once, and every attempt of it is charged from that row. When no model of
the run has tiers, a model's index is its row and no call needs one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from budget.domain.prices import PriceCatalog

NEVER = np.iinfo(np.int64).max  # the threshold of a padding row: no prompt passes it


@dataclass(frozen=True, slots=True)
class PriceSheet:
    """Per-token prices of a run's models, flat arrays indexed by row = model * tiers + tier."""

    tiers: int
    above: np.ndarray  # (models, tiers): a tier applies to prompts of more tokens; -1 for the base row
    input: np.ndarray
    cached_input: np.ndarray
    cache_write: np.ndarray
    output: np.ndarray

    @classmethod
    def of(cls, catalog: PriceCatalog, models: Sequence[str]) -> PriceSheet:
        """The sheet of `models` (the run's model indices, in order) at the catalog's prices."""
        prices = [catalog[model] for model in models]
        tiers = 1 + max(len(price.tiers) for price in prices)
        above = np.full((len(prices), tiers), NEVER, dtype=np.int64)
        columns = {name: np.zeros((len(prices), tiers), dtype=np.int64) for name in _FIELDS}
        for index, price in enumerate(prices):
            rows = [(-1, price.base), *((tier.above, tier.rates) for tier in price.tiers)]
            for tier, (threshold, rates) in enumerate(rows):
                above[index, tier] = threshold
                for name in _FIELDS:
                    columns[name][index, tier] = getattr(rates, name)
            for tier in range(len(rows), tiers):  # padding: never reached, priced as the last real row
                for name in _FIELDS:
                    columns[name][index, tier] = columns[name][index, len(rows) - 1]
        return cls(tiers, above, *(columns[name].ravel() for name in _FIELDS))

    def call_rows(self, model: np.ndarray, prompt_tokens: np.ndarray) -> np.ndarray | None:
        """Each call's price row from its model and prompt size; None when the model is the row."""
        if self.tiers == 1:
            return None
        model = model.astype(np.int64)
        passed = np.asarray(prompt_tokens, dtype=np.int64)[:, None] > self.above[model]
        rows: np.ndarray = model * self.tiers + passed.sum(axis=1) - 1
        return rows


_FIELDS = ("input", "cached_input", "cache_write", "output")
