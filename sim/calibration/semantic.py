"""Semantic-cache calibration: labelled queries and their embeddings in, a similarity profile out.

The simulator's semantic cache (sim/model/policies/cache.py) takes two numbers per threshold: `true_hit`, the
chance that a lookup finds a cached paraphrase when its cluster holds one, and `false_hit`, the chance
that a lookup without a true hit is served a wrong cached answer. This module measures both on labelled
query groups (an intent is a cluster: two queries of one group may share an answer, of two groups must
not), the way a semantic cache works: a lookup takes the most similar stored query and serves its answer
when the cosine similarity reaches the threshold.

The protocol, seeded:
- a share of the groups is held out entirely ("unseen"): their queries arrive at a cache that never saw
  their intent -- the first time a question is asked;
- of every other group a share of the queries is stored in the cache, the rest look it up ("seen");
- out-of-scope queries (group None) are never stored and only look up: any hit they get is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, unique

import numpy as np

from sim.errors import ArgumentError
from sim.io.progress import SILENT, Progress

OUT_OF_SCOPE = -1  # the group id of a query no group's answer fits


@unique
class ProbeKind(IntEnum):
    """What a lookup may find in the cache (Split.probe_kind, int8)."""

    SEEN = 0  # its group has queries stored: a hit of its own group is right
    UNSEEN = 1  # its group was held out entirely: any hit is wrong (a first-time question)
    OUT_OF_SCOPE = 2  # it has no group: any hit is wrong


# The profile's thresholds: 0.50 to 0.99 by 0.01 (cosine similarity of unit vectors).
DEFAULT_THRESHOLDS = tuple(round(0.50 + 0.01 * step, 2) for step in range(50))


@dataclass(frozen=True, slots=True)
class Split:
    """Which queries the cache stores and which look it up, and what each lookup may find."""

    stored: np.ndarray  # indices of the stored queries
    probes: np.ndarray  # indices of the lookups
    probe_kind: np.ndarray  # a ProbeKind per lookup


def split_queries(groups: np.ndarray, *, stored_share: float, unseen_share: float, seed: int) -> Split:
    """Hold out `unseen_share` of the groups (never all of them), store `stored_share` of each other
    group's queries (at least one, and at least one left to look up when the group has two), look up
    all the rest."""
    rng = np.random.default_rng(seed)
    names = np.unique(groups[groups != OUT_OF_SCOPE])
    held_out = min(round(unseen_share * len(names)), len(names) - 1)  # the cache must store something
    unseen = set(rng.choice(names, size=held_out, replace=False).tolist())
    stored: list[np.ndarray] = []
    probes: list[np.ndarray] = []
    kinds: list[np.ndarray] = []
    for group in names.tolist():
        members = rng.permutation(np.flatnonzero(groups == group))
        if group in unseen:
            probes.append(members)
            kinds.append(np.full(len(members), ProbeKind.UNSEEN, dtype=np.int8))
            continue
        keep = min(max(1, round(stored_share * len(members))), max(1, len(members) - 1))
        stored.append(members[:keep])
        probes.append(members[keep:])
        kinds.append(np.full(len(members) - keep, ProbeKind.SEEN, dtype=np.int8))
    outside = np.flatnonzero(groups == OUT_OF_SCOPE)
    probes.append(outside)
    kinds.append(np.full(len(outside), ProbeKind.OUT_OF_SCOPE, dtype=np.int8))
    return Split(
        stored=np.concatenate(stored) if stored else np.empty(0, dtype=np.int64),
        probes=np.concatenate(probes),
        probe_kind=np.concatenate(kinds),
    )


@dataclass(frozen=True, slots=True)
class Lookups:
    """Per lookup: the most similar stored query (its index among all queries), its similarity, and
    whether it is of the lookup's group."""

    similarity: np.ndarray
    same_group: np.ndarray
    kind: np.ndarray  # a ProbeKind per lookup (the split's probe_kind)
    match: np.ndarray


def nearest_stored(
    embeddings: np.ndarray,
    groups: np.ndarray,
    split: Split,
    progress: Progress = SILENT,
    chunk: int = 2048,
) -> Lookups:
    """Each lookup's best match among the stored queries by cosine similarity (rows are normalised here,
    so any embedding scale works). Ties go to the first stored query. `progress` counts the lookups."""
    if len(split.stored) == 0:
        raise ArgumentError("split", "no stored queries: every group was held out")
    unit = unit_rows(embeddings)
    stored = unit[split.stored]
    similarity = np.empty(len(split.probes), dtype=np.float32)
    best = np.empty(len(split.probes), dtype=np.int64)
    for start in range(0, len(split.probes), chunk):
        scores = unit[split.probes[start : start + chunk]] @ stored.T
        best[start : start + chunk] = np.argmax(scores, axis=1)
        similarity[start : start + chunk] = scores[np.arange(len(scores)), best[start : start + chunk]]
        progress.advance(len(scores))
    same = groups[split.stored][best] == groups[split.probes]
    same &= groups[split.probes] != OUT_OF_SCOPE
    return Lookups(similarity=similarity, same_group=same, kind=split.probe_kind, match=split.stored[best])


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32 (a zero row stays zero): dot products are then cosines."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True, slots=True)
class ProfileRow:
    """What a semantic cache does at one threshold. Rates are shares of lookups; counts are lookups."""

    threshold: float
    true_hit: float  # seen lookups answered from a stored query of their own group
    false_hit: float  # lookups without a true hit served another group's answer (the sim's false_hit)
    wrong_when_seen: float  # seen lookups served another group's answer
    wrong_when_unseen: float  # unseen-group lookups served any answer (all wrong)
    out_of_scope_hits: int  # out-of-scope lookups served any answer (all wrong; must be 0)
    out_of_scope_lookups: int


def similarity_profile(
    lookups: Lookups, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> list[ProfileRow]:
    """One row per threshold (a lookup hits when its best similarity is >= the threshold)."""
    seen = lookups.kind == ProbeKind.SEEN
    unseen = lookups.kind == ProbeKind.UNSEEN
    outside = lookups.kind == ProbeKind.OUT_OF_SCOPE
    rows = []
    for threshold in thresholds:
        hit = lookups.similarity >= np.float32(threshold)
        true = hit & lookups.same_group
        wrong = hit & ~lookups.same_group
        without_true_hit = len(hit) - int(np.count_nonzero(true))
        rows.append(
            ProfileRow(
                threshold=float(threshold),
                true_hit=_share(true[seen]),
                false_hit=int(np.count_nonzero(wrong)) / without_true_hit if without_true_hit else 0.0,
                wrong_when_seen=_share(wrong[seen]),
                wrong_when_unseen=_share(wrong[unseen]),
                out_of_scope_hits=int(np.count_nonzero(hit[outside])),
                out_of_scope_lookups=int(np.count_nonzero(outside)),
            )
        )
    return rows


def closest_wrong(lookups: Lookups, count: int) -> np.ndarray:
    """Positions of the `count` lookups whose best match is of another group with the highest similarity:
    the ones a threshold must stay above."""
    wrong = np.flatnonzero(~lookups.same_group)
    order = np.argsort(-lookups.similarity[wrong], kind="stable")
    return wrong[order[:count]]


def _share(flags: np.ndarray) -> float:
    return float(np.count_nonzero(flags)) / len(flags) if len(flags) else 0.0


def recommend(rows: Sequence[ProfileRow], max_false_hit: float) -> ProfileRow | None:
    """The lowest threshold (most hits) whose false-hit rate is at most `max_false_hit` and at which no
    out-of-scope query hits; None when no threshold of the profile qualifies."""
    for row in sorted(rows, key=lambda r: r.threshold):
        if row.false_hit <= max_false_hit and row.out_of_scope_hits == 0:
            return row
    return None
