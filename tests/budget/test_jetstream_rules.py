"""The cluster's pure rules, without a server: users -> partitions, and the lease's moves and validity."""

from __future__ import annotations

import pytest

from budget.jetstream.lease import (
    Held,
    LeaseTerms,
    Move,
    Sighting,
    decode_owner,
    encode_owner,
    next_move,
    observe,
)
from budget.jetstream.partitions import (
    fnv1a_32,
    journal_subject,
    lease_key,
    partition_of,
    partition_subjects,
    partitioned_subject,
    stream_name,
    user_id_problem,
)


def test_fnv1a_32_matches_the_published_test_vectors() -> None:
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_partition_of_is_stable_in_range_and_spread() -> None:
    users = [f"user-{index}" for index in range(2_000)]
    first = [partition_of(user, 8) for user in users]
    assert first == [partition_of(user, 8) for user in users]
    assert set(first) == set(range(8))
    # no partition gets more than twice its share of 2,000 users
    assert max(first.count(partition) for partition in range(8)) < 2 * 2_000 / 8


def test_partition_of_refuses_no_partitions() -> None:
    with pytest.raises(ValueError, match="at least 1, not 0"):
        partition_of("u1", 0)


def test_a_partitions_names_share_its_subject_space() -> None:
    assert stream_name(3) == "MARGINS_P3"
    assert partition_subjects(3) == "margins.part.3.>"
    assert partitioned_subject(3, "usage", "u42").startswith("margins.part.3.")
    assert journal_subject(3) == "margins.journal.3"  # outside the input's subjects: a stream of its own
    assert lease_key(3) == "partition.3"


@pytest.mark.parametrize("user_id", ["a.b", "a b", "a*", "a>", "tab\there"])
def test_a_user_id_that_is_not_one_subject_token_is_named(user_id: str) -> None:
    problem = user_id_problem(user_id)
    assert problem is not None and repr(user_id) in problem


def test_ordinary_user_ids_are_fine_on_the_cluster() -> None:
    assert user_id_problem("u42") is None
    assert user_id_problem("user-7_ü") is None
    assert user_id_problem("") is not None


def test_lease_terms_refuse_a_margin_as_long_as_the_ttl() -> None:
    with pytest.raises(ValueError, match="safety_s < ttl_s"):
        LeaseTerms(ttl_s=1.0, safety_s=1.0)
    assert LeaseTerms(ttl_s=4.0).renew_every_s == 1.0


def test_a_holder_stops_before_any_contender_may_take_over() -> None:
    terms = LeaseTerms(ttl_s=4.0, safety_s=0.5)
    held = Held("partition.0", "a", token=7, sent_at=100.0)
    assert held.is_valid(103.4, terms)
    assert not held.is_valid(103.5, terms)
    # a contender that first saw token 7 at the earliest moment it could exist (the write's send time)
    sighting = observe(None, "a", 7, now=100.0)
    assert next_move(sighting, 103.5, terms) is Move.WAIT
    assert next_move(sighting, 104.0, terms) is Move.TAKE_OVER


def test_a_sighting_keeps_its_first_time_until_the_revision_changes() -> None:
    first = observe(None, "a", 7, now=10.0)
    assert observe(first, "a", 7, now=12.0) == Sighting("a", 7, 10.0)
    assert observe(first, "a", 8, now=12.0) == Sighting("a", 8, 12.0)
    assert observe(first, None, None, now=12.0) == Sighting(None, None, 12.0)


def test_a_free_lease_is_created_at_once() -> None:
    assert next_move(Sighting(None, None, 0.0), 0.0, LeaseTerms()) is Move.CREATE


def test_owner_values_round_trip_and_garbage_is_shown_not_raised() -> None:
    assert decode_owner(encode_owner("enforcer-ü")) == "enforcer-ü"
    assert decode_owner(b"\xff") == "\\xff"
    assert decode_owner(None) == ""
