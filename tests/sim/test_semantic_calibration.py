"""The calibration core: the split, nearest stored match, the profile's rates and the recommendation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.calibration.semantic import (
    OUT_OF_SCOPE,
    Lookups,
    ProbeKind,
    ProfileRow,
    Split,
    closest_wrong,
    nearest_stored,
    recommend,
    similarity_profile,
    split_queries,
)
from sim.errors import ArgumentError


def test_rates_of_a_hand_worked_cache() -> None:
    # Stored: a (group 0) along x, b (group 1) along y. Lookups, with their best match:
    #   p0 group 0 at 0.96 to a (true), p1 group 0 at 0.80 to b (wrong although a is cached),
    #   p2 group 2 (held out) at 0.90 to a (wrong), p3 out of scope at 0.75 to b (wrong).
    def at(similarity: float, towards_y: bool = False) -> list[float]:
        other = float(np.sqrt(1 - similarity**2))
        return [other, similarity] if towards_y else [similarity, other]

    embeddings = np.array([[1, 0], [0, 1], at(0.96), at(0.80, True), at(0.90), at(0.75, True)])
    groups = np.array([0, 1, 0, 0, 2, OUT_OF_SCOPE])
    split = Split(
        stored=np.array([0, 1]),
        probes=np.array([2, 3, 4, 5]),
        probe_kind=np.array([ProbeKind.SEEN, ProbeKind.SEEN, ProbeKind.UNSEEN, ProbeKind.OUT_OF_SCOPE]),
    )
    lookups = nearest_stored(embeddings, groups, split)
    np.testing.assert_allclose(lookups.similarity, [0.96, 0.80, 0.90, 0.75], atol=1e-6)
    assert lookups.same_group.tolist() == [True, False, False, False]
    assert lookups.match.tolist() == [0, 1, 0, 1]
    assert closest_wrong(lookups, 2).tolist() == [2, 1]  # p2 at 0.90, then p1 at 0.80

    low, middle, high = similarity_profile(lookups, thresholds=[0.5, 0.85, 0.95])
    # 0.5: every lookup hits; one true hit of two seen; three wrong of the three without a true hit.
    assert (low.true_hit, low.false_hit, low.wrong_when_seen, low.wrong_when_unseen) == (0.5, 1.0, 0.5, 1.0)
    assert (low.out_of_scope_hits, low.out_of_scope_lookups) == (1, 1)
    # 0.85: p1 (0.80) and p3 (0.75) miss; p2 (0.90) is still a wrong hit.
    assert (middle.true_hit, middle.false_hit, middle.wrong_when_seen) == (0.5, 1 / 3, 0.0)
    assert (middle.wrong_when_unseen, middle.out_of_scope_hits) == (1.0, 0)
    # 0.95: only the true hit is left.
    assert (high.true_hit, high.false_hit, high.wrong_when_unseen) == (0.5, 0.0, 0.0)

    assert recommend([low, middle, high], max_false_hit=0.5) == middle
    assert recommend([low, middle, high], max_false_hit=0.0) == high
    assert recommend([low, middle], max_false_hit=0.0) is None


def test_split_holds_out_groups_and_never_stores_out_of_scope() -> None:
    groups = np.repeat(np.arange(10), 6)
    groups = np.concatenate([groups, np.full(7, OUT_OF_SCOPE)])
    split = split_queries(groups, stored_share=0.5, unseen_share=0.2, seed=3)
    assert sorted([*split.stored.tolist(), *split.probes.tolist()]) == list(range(len(groups)))
    unseen_groups = set(groups[split.probes[split.probe_kind == ProbeKind.UNSEEN]].tolist())
    assert len(unseen_groups) == 2
    assert not unseen_groups & set(groups[split.stored].tolist())
    assert len(split.stored) == 8 * 3  # half of each of the 8 seen groups
    assert set(groups[split.probes[split.probe_kind == ProbeKind.OUT_OF_SCOPE]].tolist()) == {OUT_OF_SCOPE}
    again = split_queries(groups, stored_share=0.5, unseen_share=0.2, seed=3)
    assert np.array_equal(again.stored, split.stored) and np.array_equal(again.probes, split.probes)


def test_a_stored_duplicate_is_a_true_hit_at_every_threshold() -> None:
    rng = np.random.default_rng(1)
    stored = rng.normal(size=(20, 16))
    embeddings = np.vstack([stored, stored[:5]])
    groups = np.concatenate([np.arange(20), np.arange(5)])
    split = Split(stored=np.arange(20), probes=np.arange(20, 25), probe_kind=np.zeros(5, dtype=np.int8))
    for row in similarity_profile(nearest_stored(embeddings, groups, split)):
        assert row.true_hit == 1.0 and row.false_hit == 0.0


@st.composite
def query_sets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    n = draw(st.integers(4, 60))
    groups = np.array(draw(st.lists(st.integers(-1, 5), min_size=n, max_size=n)))
    groups[:2] = [0, 1]  # at least two groups
    seed = draw(st.integers(0, 2**32 - 1))
    embeddings = np.random.default_rng(seed).normal(size=(n, 8))
    return embeddings, groups, seed


@settings(max_examples=60, deadline=None)
@given(query_sets(), st.floats(0.1, 0.9), st.floats(0.0, 0.6))
def test_profile_invariants(data: tuple[np.ndarray, np.ndarray, int], stored: float, unseen: float) -> None:
    embeddings, groups, seed = data
    split = split_queries(groups, stored_share=stored, unseen_share=unseen, seed=seed)
    assert len(split.stored) > 0  # at least one group is never held out
    lookups = nearest_stored(embeddings, groups, split)
    # Held-out and out-of-scope lookups cannot be right.
    assert not lookups.same_group[lookups.kind != ProbeKind.SEEN].any()
    rows = similarity_profile(lookups)
    for row in rows:
        for rate in (row.true_hit, row.false_hit, row.wrong_when_seen, row.wrong_when_unseen):
            assert 0.0 <= rate <= 1.0
        assert row.true_hit + row.wrong_when_seen <= 1.0 + 1e-12
    # Raising the threshold only removes hits.
    for earlier, later in itertools.pairwise(rows):
        assert later.true_hit <= earlier.true_hit
        assert later.wrong_when_seen <= earlier.wrong_when_seen
        assert later.wrong_when_unseen <= earlier.wrong_when_unseen
        assert later.out_of_scope_hits <= earlier.out_of_scope_hits
    best = recommend(rows, max_false_hit=0.05)
    if best is not None:
        assert best.false_hit <= 0.05 and best.out_of_scope_hits == 0
        assert all(r.false_hit > 0.05 or r.out_of_scope_hits for r in rows if r.threshold < best.threshold)


def test_no_stored_query_is_an_error() -> None:
    lookups_split = Split(stored=np.array([], dtype=np.int64), probes=np.arange(2), probe_kind=np.zeros(2))
    with pytest.raises(ArgumentError, match="no stored queries") as caught:
        nearest_stored(np.eye(2), np.array([0, 1]), lookups_split)
    assert caught.value.argument == "split"


def test_a_similarity_equal_to_the_threshold_hits() -> None:
    lookups = Lookups(
        similarity=np.array([0.9], dtype=np.float32),
        same_group=np.array([True]),
        kind=np.array([ProbeKind.SEEN]),
        match=np.array([0]),
    )
    (row,) = similarity_profile(lookups, thresholds=[0.9])
    assert row == ProfileRow(0.9, 1.0, 0.0, 0.0, 0.0, 0, 0)
