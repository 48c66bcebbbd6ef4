"""The router's optional local-model classifier: k nearest labelled examples by sentence embedding.

A team labels a few hundred of its own requests easy or hard; a new request goes to the expensive model
when most of its k most similar labelled requests are hard. Embeddings come from
sim/calibration/embedding.py (the `semantic` extra); this module is the pure vote.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sim.calibration.router_eval import Verdict
from sim.calibration.semantic import unit_rows
from sim.errors import ArgumentError


def knn_verdicts(
    train: np.ndarray, labels: Sequence[str], queries: np.ndarray, k: int
) -> tuple[Verdict, ...]:
    """Route each query by a majority of its k most cosine-similar training examples ("hard" wins only a
    strict majority, so an even split stays on the cheap model)."""
    if not 1 <= k <= len(labels):
        raise ArgumentError("k", f"must be between 1 and the {len(labels)} training examples, got {k}")
    hard = np.array([label == "hard" for label in labels])
    scores = unit_rows(queries) @ unit_rows(train).T
    nearest = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    votes = hard[nearest].sum(axis=1)
    return tuple(
        Verdict("hard" if 2 * int(v) > k else "easy", (f"{int(v)}/{k} nearest hard",)) for v in votes
    )
