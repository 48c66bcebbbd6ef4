"""The ledger's compact state: the dedupe index against a dict, snapshots and their damaged parts."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import budget.domain.seen
from budget.domain.events import DeadLettered, Event, LimitCrossed, UsageRecorded
from budget.domain.ledger import ConfigureUser, Ledger, LedgerSnapshot
from budget.domain.profiles import Profile, RecentUsers
from budget.domain.seen import (
    DIGEST_MASK,
    FILTER_BITS,
    SeenIndex,
    content_digest,
    filter_with,
    key_hasher,
    run_filter,
    usage_key,
    usage_key_of,
)
from budget.domain.tallies import UNCONFIGURED
from budget.domain.users import UserIndex
from budget.errors import SnapshotError
from tests.budget.ledger_helpers import CATALOG, MINI_COST, NOW, authorize, make_config, make_ledger, usage

KEYS = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(KEYS, st.integers(0, DIGEST_MASK), st.integers(0, 40), st.integers(0, 3)), max_size=300
    ),
    stage_limit=st.integers(1, 6),
)
def test_the_dedupe_index_holds_what_a_dict_holds(
    steps: list[tuple[int, int, int, int]], stage_limit: int
) -> None:
    """Keys, digests and months in, some months forgotten along the way: the index answers as a dict."""
    index = SeenIndex(stage_limit=stage_limit)
    model: dict[int, tuple[int, int]] = {}
    first = 0
    for key, digest, month, forget in steps:
        if forget == 0 and month > first:
            first = month - 1
            index.forget_before(first)
            model = {k: v for k, v in model.items() if v[1] >= first}
        if month < first or key in model:
            continue
        assert index.get(key) is None
        index.add(key, digest, month)
        model[key] = (digest, month)
        assert index.get(key) == digest | month << 32
    assert {k: (d, m) for k, d, m in index.entries()} == model
    assert len(index) == len(model)
    index.compact()
    for key, (digest, month) in model.items():
        assert index.get(key) == digest | month << 32
    thawed = SeenIndex.thaw(index.freeze(), index.first_month)
    assert set(thawed.entries()) == set(index.entries())
    for key, (digest, month) in model.items():
        assert thawed.get(key) == digest | month << 32
        assert not thawed.insert(key, digest, month)
    for key, *_ in steps:
        if key not in model:
            assert thawed.get(key) is None


@settings(max_examples=30, deadline=None)
@given(keys=st.lists(KEYS, max_size=3000, unique=True))
def test_a_runs_filter_marks_every_key_and_at_most_one_slot_in_eight(keys: list[int]) -> None:
    """No key of the run is ever answered "not held" by its filter, and an absent key finds its slot
    marked (and pays for the binary search) at most 1 time in FILTER_BITS."""
    bitmap, slots = run_filter(np.array(sorted(keys), dtype=np.int64))
    assert len(bitmap) * 8 == slots >= FILTER_BITS * len(keys)
    for key in keys:
        slot = key % slots
        assert bitmap[slot >> 3] >> (slot & 7) & 1
    marked = int(np.unpackbits(np.frombuffer(bitmap, np.uint8)).sum())
    assert marked <= len(keys) and marked * FILTER_BITS <= slots
    # A merge marks its keys in a copy of the filter it had: every key of the grown run is marked.
    first, rest = keys[: len(keys) // 2], keys[len(keys) // 2 :]
    early, early_slots = run_filter(np.array(sorted(first), dtype=np.int64))
    grown = filter_with(early, early_slots, np.array(rest, dtype=np.int64))
    assert len(grown) == len(early)
    for key in keys:
        slot = key % early_slots
        assert grown[slot >> 3] >> (slot & 7) & 1


@settings(max_examples=50, deadline=None)
@given(user=st.text(max_size=40), event_id=st.text(max_size=40))
def test_a_usage_key_is_blake2b_of_the_msgpack_pair(user: str, event_id: str) -> None:
    """The key never changes with how it is computed: snapshots hold keys made by earlier versions."""
    packed = msgspec.msgpack.encode([user, event_id])
    expected = int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little", signed=True)
    assert usage_key(user, event_id) == expected == usage_key_of(key_hasher(user), event_id)


def test_keys_and_digests_are_stable_and_tell_users_and_content_apart() -> None:
    assert usage_key("u", "e1") == usage_key("u", "e1") != usage_key("v", "e1")
    # The key is not a plain concatenation: ("a", "b:c") and ("a:b", "c") differ.
    assert usage_key("a", "b\x1fc") != usage_key("a\x1fb", "c")
    ts = datetime(2026, 11, 26, tzinfo=UTC)
    fields: tuple[Any, ...] = ("gpt-4o", 10, 5, 0, 0, "default", "ok", None)
    assert content_digest(ts, *fields) == content_digest(ts.astimezone(), *fields)
    assert content_digest(ts, *fields) != content_digest(ts + timedelta(microseconds=1), *fields)
    assert 0 <= content_digest(ts, *fields) <= DIGEST_MASK


def test_new_settings_reach_the_users_next_usage_at_once() -> None:
    """Decisions keep what they worked out about recent users: a configure must replace it."""
    ledger = make_ledger(cap_usd="1")
    now = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)  # already December in Tokyo
    [first] = ledger.execute(usage("a", ts=now), now)
    assert isinstance(first, UsageRecorded) and first.month == "2026-11"
    ledger.execute(ConfigureUser(user_id="u", timezone="Asia/Tokyo"), now)
    [second] = ledger.execute(usage("b", ts=now), now)
    assert isinstance(second, UsageRecorded) and second.month == "2026-12"
    assert ledger.execute(ConfigureUser(user_id="u", cap_usd=Decimal("0.0003")), now)[1:] == []
    _, *crossed = ledger.execute(usage("c", ts=now), now)  # 2 x MINI_COST passes a $0.0003 cap
    assert [(e.limit, e.month) for e in crossed if isinstance(e, LimitCrossed)] == [
        ("soft", "2026-12"),
        ("cap", "2026-12"),
    ]


def test_recent_users_are_bounded() -> None:
    recent = RecentUsers(limit=3)
    plan = make_config().default_plan
    profiles = [Profile(f"u{i}", i, UNCONFIGURED, "UTC", 1, plan) for i in range(7)]
    for profile in profiles:
        recent.keep(profile)
        assert recent.get(profile.user_id) is profile
    assert sum(recent.get(p.user_id) is not None for p in profiles) <= 3
    recent.forget("u6")
    assert recent.get("u6") is None


def busy_ledger() -> Ledger:
    """A ledger holding a bit of everything: settings, spend in two months, open and expired
    reservations, announced limits, many ids."""
    ledger = make_ledger(cap_usd="0.02")
    start = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    ledger.execute(ConfigureUser(user_id="tokyo", timezone="Asia/Tokyo", plan="pro"), start)
    for i in range(300):
        now = start + timedelta(minutes=i)
        ledger.execute(usage(f"e{i}", user=f"u{i % 7}", ts=now), now)
    ledger.execute(authorize("q1", user="u1"), start)
    ledger.apply_all(ledger.expire_due(start + timedelta(minutes=11)))
    ledger.execute(authorize("q2", user="u2"), start + timedelta(minutes=300))
    return ledger


@pytest.fixture(params=[2, None], ids=["merged", "recent"])
def stage_limit(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dedupe stages of 2 (nearly every id in a sorted run), or the default (every id still recent)."""
    if request.param is not None:
        monkeypatch.setattr(budget.domain.seen, "STAGE_LIMIT", request.param)


@pytest.mark.usefixtures("stage_limit")
def test_a_snapshot_round_trips_through_its_encoded_parts() -> None:
    ledger = busy_ledger()
    meta, parts = ledger.to_snapshot(seq=41).encode()
    assert meta["seq"] == 41 and meta["users"] == 8 and meta["months"] == ["2026-10", "2026-11"]
    assert all(isinstance(part, np.ndarray) and part.ndim == 1 for part in parts.values())
    # Written as raw bytes and read back as the metadata says.
    read = {
        name: np.frombuffer(part.tobytes(), dtype=np.dtype(meta["parts"][name]["dtype"]))
        for name, part in parts.items()
    }
    restored = Ledger.from_snapshot(ledger.config, CATALOG, LedgerSnapshot.decode(meta, read))
    assert restored.snapshot() == ledger.snapshot()
    # And it goes on as the live one does.
    later = datetime(2026, 11, 1, 5, 0, tzinfo=UTC)
    for target in (ledger, restored):
        target.execute(usage("late", user="u3", ts=later), later)
        target.apply_all(target.expire_due(later))
    assert restored.snapshot() == ledger.snapshot()


def test_a_snapshot_does_not_change_when_the_ledger_goes_on() -> None:
    ledger = busy_ledger()
    snapshot = ledger.to_snapshot(seq=1)
    expected = Ledger.from_snapshot(ledger.config, CATALOG, snapshot).snapshot()
    now = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)
    for i in range(50):
        ledger.execute(usage(f"more{i}", user=f"u{i % 3}", ts=now), now)
    ledger.execute(ConfigureUser(user_id="u1", cap_usd=None, timezone="Europe/Paris"), now)
    assert Ledger.from_snapshot(ledger.config, CATALOG, snapshot).snapshot() == expected != ledger.snapshot()


def encoded() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return busy_ledger().to_snapshot(seq=7).encode()


def test_a_damaged_snapshot_names_the_part() -> None:
    meta, parts = encoded()
    missing = dict(parts)
    del missing["month.2026-11.spent"]
    with pytest.raises(SnapshotError, match=r"month\.2026-11\.spent: missing"):
        LedgerSnapshot.decode(meta, missing)
    short = {**parts, "users.ends": parts["users.ends"][:-1]}
    with pytest.raises(SnapshotError, match=r"users\.ends: expected 8 values"):
        LedgerSnapshot.decode(meta, short)
    retyped = {**parts, "users.zone": parts["users.zone"].astype(np.int32)}
    with pytest.raises(SnapshotError, match=r"users\.zone"):
        LedgerSnapshot.decode(meta, retyped)
    garbled = parts["reservations"].copy()
    garbled[:4] = 0xC1  # never valid msgpack
    with pytest.raises(SnapshotError, match="reservations: does not decode"):
        LedgerSnapshot.decode(meta, {**parts, "reservations": garbled})
    with pytest.raises(SnapshotError, match="format"):
        LedgerSnapshot.decode({**meta, "format": 99}, parts)
    with pytest.raises(SnapshotError, match="meta"):
        LedgerSnapshot.decode({key: value for key, value in meta.items() if key != "users"}, parts)


def test_inconsistent_parts_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget.domain.seen, "STAGE_LIMIT", 2)
    meta, parts = encoded()
    shuffled = parts["seen.keys"][::-1].copy()
    assert len(shuffled) > 100
    with pytest.raises(SnapshotError, match=r"seen: seen\.keys is not strictly increasing"):
        LedgerSnapshot.decode(meta, {**parts, "seen.keys": shuffled})
    snapshot = LedgerSnapshot.decode(meta, parts)
    zone = snapshot.zone.copy()
    zone[0] = 99  # no such zone name
    damaged = LedgerSnapshot(**{**{f: getattr(snapshot, f) for f in snapshot.__slots__}, "zone": zone})
    with pytest.raises(SnapshotError, match="users: a settings code is outside its name table"):
        Ledger.from_snapshot(make_config(), CATALOG, damaged)


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.text(min_size=0, max_size=12), max_size=3000))
def test_the_user_index_numbers_ids_as_a_dict_would(ids: list[str]) -> None:
    """Any str (lone surrogates too), through table rebuilds, and back from its frozen parts."""
    index = UserIndex()
    model: dict[str, int] = {}
    for user in ids:
        assert index.find(user) == model.get(user)
        assert index.add(user) == model.setdefault(user, len(model))
    assert len(index) == len(model)
    assert index.ids_of(range(len(model))) == list(model)
    thawed = UserIndex.thaw(*index.frozen())
    assert [thawed.find(user) for user in model] == list(range(len(model)))
    assert thawed.find("\ud800 never added") is None


def test_a_user_index_with_a_repeated_id_is_refused() -> None:
    index = UserIndex()
    for user in ("alice", "bob"):
        index.add(user)
    blob, ends = index.frozen()
    with pytest.raises(ValueError, match="user ids repeat"):
        UserIndex.thaw(blob + b"alice", np.append(ends, len(blob) + 5))
    with pytest.raises(ValueError, match="do not cut"):
        UserIndex.thaw(blob, ends + 1)


def indexed_users(ledger: Ledger) -> int:
    return len(ledger.to_snapshot(seq=0).user_ends)


def test_users_who_hold_nothing_any_more_leave_the_index() -> None:
    """2,000 users in January, 10 of them and one configured user left in March: once January is settled
    the index renumbers without the idle ones (a replay alike), and what the others hold stays theirs."""
    ledger = make_ledger()
    log: list[Event] = []
    january = datetime(2026, 1, 10, tzinfo=UTC)
    log += ledger.execute(ConfigureUser(user_id="admin-set", plan="pro"), january)
    for i in range(2000):
        log += ledger.execute(usage(f"j{i}", user=f"user-{i}", ts=january), january)
    assert indexed_users(ledger) == 2001
    march = datetime(2026, 3, 5, tzinfo=UTC)
    for i in range(0, 2000, 200):
        log += ledger.execute(usage(f"m{i}", user=f"user-{i}", ts=march, input_tokens=2000), march)
    assert indexed_users(ledger) == 11
    assert ledger.plan("admin-set").name == "pro"
    assert ledger.spent("user-1000", "2026-03") == (2000 * 150 + 100 * 600, 0)
    assert ledger.users() == {f"user-{i}" for i in range(0, 2000, 200)}
    log += ledger.execute(usage("again", user="user-7", ts=march), march)  # back after a month away
    assert ledger.spent("user-7", "2026-03") == (MINI_COST, 0) and indexed_users(ledger) == 12
    replayed = make_ledger()
    replayed.apply_all(log)
    assert replayed.snapshot() == ledger.snapshot() and indexed_users(replayed) == 12
    restored = Ledger.from_snapshot(ledger.config, CATALOG, ledger.to_snapshot(seq=1))
    assert restored.snapshot() == ledger.snapshot()


def test_what_decisions_keep_of_recent_users_follows_their_renumbering() -> None:
    """Users known to decisions (each reported twice in January) are renumbered once January is settled:
    their March usage still lands on their own totals, as in a replay."""
    ledger = make_ledger()
    log: list[Event] = []
    january = datetime(2026, 1, 10, tzinfo=UTC)
    for round_ in range(2):
        for i in range(100):
            log += ledger.execute(usage(f"j{round_}-{i}", user=f"user-{i}", ts=january), january)
    march = datetime(2026, 3, 5, tzinfo=UTC)
    for i in range(99, 0, -10):  # the last numbered first: every later one was renumbered
        log += ledger.execute(usage(f"m{i}", user=f"user-{i}", ts=march, input_tokens=1000 + i), march)
    assert indexed_users(ledger) == 10
    for i in range(99, 0, -10):
        assert ledger.spent(f"user-{i}", "2026-03") == (MINI_COST + 150 * i, 0)
    replayed = make_ledger()
    replayed.apply_all(log)
    assert replayed.snapshot() == ledger.snapshot()


def test_a_usage_report_without_its_payload_is_described_field_by_field() -> None:
    """What a dead letter keeps of a usage report made in Python (no original payload)."""
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    ledger = make_ledger()
    [dead] = ledger.decide(usage("e", ts=ts, model="no-such-model", topic="t"), NOW)
    assert isinstance(dead, DeadLettered) and dead.reason == "unknown_model"
    assert msgspec.json.decode(dead.payload) == {
        "event_id": "e",
        "user_id": "u",
        "ts": "2026-01-01T00:00:00Z",
        "model": "no-such-model",
        "input_tokens": 1000,
        "output_tokens": 100,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "feature": "default",
        "reservation_id": None,
        "outcome": "ok",
        "topic": "t",
    }
