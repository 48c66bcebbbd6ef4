"""`margins spend` over a partitioned root (`STORE/partition=<p>/`, one event store per partition): the same
answers as one store holding every event, and one clear message for a root that is not what it should be."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budget.cli.spend import spend
from budget.domain.events import DeadLettered, Event, LimitCrossed, UsageRecorded, UserConfigured
from budget.jetstream.partitions import partition_of
from budget.store.event_store import EventStore
from budget.store.manifest import read_manifest

MARGINS = Path(sys.executable).with_name("margins")
T0 = datetime(2026, 10, 31, 20, 0, tzinfo=UTC)
USERS = [f"u{i}" for i in range(7)]
CAPS = 'default_cap_usd = "0.01"\n\n[plans.pro]\ncap_usd = "5"\n'


def usage(i: int, user: str, minutes: int, cost: int, model: str, feature: str) -> UsageRecorded:
    ts = T0 + timedelta(minutes=minutes)
    return UsageRecorded(
        event_id=f"e{i}",
        user_id=user,
        ts=ts,
        model=model,
        input_tokens=100 + i,
        output_tokens=10,
        cost_nanos=cost,
        feature=feature,
        month=ts.strftime("%Y-%m"),
    )


def user_of(event: Event) -> str:
    """Whose partition an event goes to (a dead letter: its topic's user, as the cluster maps it)."""
    return getattr(event, "user_id", None) or ""


def write(root: Path, events: Sequence[Event]) -> None:
    """A store holding `events`, in two flushes (so two segments of each kind where there are events)."""
    with EventStore.open(root, flush_interval=None, offload=False) as store:
        half = len(events) // 2
        for batch in (events[:half], events[half:]):
            if batch:
                store.append(list(batch))
            store.flush()


def write_split(root: Path, events: Sequence[Event], partition: dict[str, int], partitions: int) -> None:
    """Each event into the store of its user's partition, in the order they came."""
    for p in range(partitions):
        write(root / f"partition={p}", [e for e in events if partition[user_of(e)] == p])


def answer(store: Path, *args: str) -> Any:
    result = CliRunner().invoke(spend, ["--store", str(store), "--format", "json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


QUERIES: list[tuple[str, ...]] = [
    ("--month", "2026-11", "--top", "100"),  # by user, with the cap column (caps from the journal)
    ("--month", "2026-11", "--top", "100", "--config", "{caps}"),  # plan and default caps
    ("--month", "2026-10", "--by", "model"),
    ("--month", "2026-11", "--by", "feature"),
    ("--month", "2026-11", "--by", "day"),
    ("--user", "u1"),  # every month of one user
    ("--user", "u2", "--month", "2026-11", "--by", "model"),
    (
        "--sql",
        "SELECT user_id, month, sum(cost_nanos) AS n, count(*) AS c FROM usage GROUP BY ALL ORDER BY ALL",
    ),
    ("--sql", "SELECT count(*) AS n, sum(cost_nanos) AS spent, sum(input_tokens) AS t FROM usage"),
    ("--sql", "SELECT * FROM spend_by_user_month ORDER BY user_id, month"),
    ("--sql", "SELECT * FROM users_over_soft_limit ORDER BY user_id, month"),
    ("--sql", "SELECT * FROM dead_letters_by_reason ORDER BY reason"),
    ("--sql", "SELECT type, count(*) AS n FROM journal GROUP BY type ORDER BY type"),
]


def same_answers(single: Path, parted: Path, caps: Path) -> None:
    for query in QUERIES:
        args = [a.format(caps=caps) for a in query]
        assert answer(parted, *args) == answer(single, *args), query


@st.composite
def event_sets(draw: st.DrawFn) -> tuple[list[Event], dict[str, int]]:
    """Usage, caps, plans, limit crossings and dead letters of a few users over two months, and a
    user -> partition (of 3) assignment, some partitions possibly left without a user."""
    n = draw(st.integers(0, 40))
    events: list[Event] = []
    for i in range(n):
        events.append(
            usage(
                i,
                draw(st.sampled_from(USERS)),
                draw(st.integers(0, 60 * 24 * 3)),  # October's last hours, then November
                draw(st.integers(0, 3_000_000)),
                draw(st.sampled_from(["gpt-4o", "gpt-4o-mini"])),
                draw(st.sampled_from(["chat", "search"])),
            )
        )
    for user in draw(st.lists(st.sampled_from(USERS), max_size=4)):
        cap = draw(st.none() | st.integers(1, 50_000_000))
        plan = draw(st.none() | st.just("pro"))
        events.insert(
            draw(st.integers(0, len(events))), UserConfigured(user_id=user, ts=T0, cap_nanos=cap, plan=plan)
        )
    for user in draw(st.lists(st.sampled_from(USERS), max_size=2, unique=True)):
        events.append(
            LimitCrossed(
                user_id=user,
                ts=T0,
                month="2026-11",
                limit="soft",
                spent_nanos=1,
                reserved_nanos=0,
                cap_nanos=9,
            )
        )
    for user in draw(st.lists(st.sampled_from(USERS), max_size=2)):
        topic = f"margins/usage/{user}"
        events.append(DeadLettered.of(ts=T0, topic=topic, payload=b"{", reason="bad_json", user_id=user))
    partition = {user: draw(st.integers(0, 2)) for user in USERS}
    return events, partition


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=event_sets())
def test_partitions_answer_as_one_store(case: tuple[list[Event], dict[str, int]]) -> None:
    events, partition = case
    with tempfile.TemporaryDirectory() as tmp:
        caps = Path(tmp) / "caps.toml"
        caps.write_text(CAPS)
        write(Path(tmp) / "single", events)
        write_split(Path(tmp) / "parted", events, partition, 3)
        same_answers(Path(tmp) / "single", Path(tmp) / "parted", caps)


def test_three_partitions_by_the_cluster_mapping(tmp_path: Path) -> None:
    """Users spread by `partition_of`, as the cluster spreads them; several segments per partition."""
    users = [f"user-{i}" for i in range(40)]
    events: list[Event] = [
        usage(i, users[i * 7 % 40], i * 3, 1_000 + i * 17, ("gpt-4o", "gpt-4o-mini")[i % 2], "chat")
        for i in range(900)
    ]
    events.insert(5, UserConfigured(user_id="user-7", ts=T0, cap_nanos=5_000_000))
    partition = {u: partition_of(u, 3) for u in users}
    assert set(partition.values()) == {0, 1, 2}
    write(tmp_path / "single", events)
    write_split(tmp_path / "parted", events, partition, 3)
    assert all(read_manifest(tmp_path / "parted" / f"partition={p}").usage for p in range(3))
    (tmp_path / "caps.toml").write_text(CAPS)
    same_answers(tmp_path / "single", tmp_path / "parted", tmp_path / "caps.toml")
    rows = {r["user_id"]: r for r in answer(tmp_path / "parted", "--month", "2026-11", "--top", "100")}
    assert rows["user-7"]["cap_usd"] == "0.005" and rows["user-7"]["pct_of_cap"] is not None


def test_an_empty_partition_directory_counts_as_no_events(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "partition=0", [usage(0, "u0", 60 * 24, 5, "gpt-4o", "chat")])
    (root / "partition=1").mkdir()  # an enforcer that has just taken partition 1
    (root / "partition=2").mkdir()
    (root / "partition=2" / "LOCK").touch()  # ... or has opened its lock and nothing else yet
    with EventStore.open(root / "partition=3", flush_interval=None, offload=False):
        pass  # a store opened once, never appended to
    (root / "README").write_text("not a partition: ignored\n")
    assert answer(root, "--month", "2026-11") == [
        {
            "user_id": "u0",
            "spent_nanos": 5,
            "spent_usd": "0.000000005",
            "events": 1,
            "cap_usd": None,
            "pct_of_cap": None,
        }
    ]
    assert answer(root, "--sql", "SELECT count(*) AS n FROM journal") == [{"n": 1}]


def test_only_empty_partitions_give_empty_views(tmp_path: Path) -> None:
    (tmp_path / "partition=0").mkdir()
    assert answer(tmp_path, "--sql", "SELECT count(*) AS n FROM usage") == [{"n": 0}]
    assert answer(tmp_path, "--month", "2026-11") == []


def bad_root(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A root that is neither a store nor a partitioned root; the path and words its message must hold."""
    root = tmp_path / "root"
    root.mkdir()
    if case == "no partitions":
        (root / "notes.txt").write_text("hello")
        (root / "partitions").mkdir()
        return (
            root,
            f"event store {root}: not a margins event store (no manifest.json, no wal/) "
            "nor a partitioned root",
        )
    if case == "partition=x":
        write(root / "partition=0", [])
        (root / "partition=x").mkdir()
        return root, f"event store {root / 'partition=x'}: not a partition directory"
    if case == "leading zero":
        write(root / "partition=0", [])
        (root / "partition=01").mkdir()
        return root, f"event store {root / 'partition=01'}: not a partition directory"
    if case == "a file":
        (root / "partition=0").write_text("")
        return root, f"event store {root / 'partition=0'}: a partition must be a directory"
    if case == "not a store":
        write(root / "partition=0", [])
        (root / "partition=1").mkdir()
        (root / "partition=1" / "events.csv").write_text("user,cost\n")
        return root, f"event store {root / 'partition=1'}: not a margins event store"
    if case == "store and partitions":
        write(root, [usage(0, "u0", 0, 5, "gpt-4o", "chat")])
        write(root / "partition=0", [])
        return root, f"event store {root}: is an event store and also holds partition=0/"
    raise AssertionError(case)


BAD = ["no partitions", "partition=x", "leading zero", "a file", "not a store", "store and partitions"]


@pytest.mark.parametrize("case", BAD)
def test_a_bad_root_is_one_message_naming_the_path_and_exit_code_2(tmp_path: Path, case: str) -> None:
    root, message = bad_root(tmp_path, case)
    result = CliRunner().invoke(spend, ["--store", str(root), "--month", "2026-11"])
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"margins spend: {message}"), result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_margins_command_names_a_damaged_partition(tmp_path: Path) -> None:
    """The real command, a damaged segment in one partition: one line naming that partition's file."""
    root = tmp_path / "root"
    for p in range(3):
        write(root / f"partition={p}", [usage(p, f"u{p}", 60 * 24, 5, "gpt-4o", "chat")])
    rollup = read_manifest(root / "partition=2").rollup[0]
    path = root / "partition=2" / rollup.file
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    argv = [str(MARGINS), "spend", "--store", str(root), "--month", "2026-11"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(
        f"margins spend: event store {root / 'partition=2'}: {rollup.file} is damaged"
    )
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_benchmark_builds_even_partitions_that_agree_with_one_store(tmp_path: Path) -> None:
    """benchmarks/spend_partitions.py at a small size: the same table from both layouts (it asserts that)."""
    from benchmarks.spend_partitions import run

    figures = run(events=2_000, partitions=4, repeats=1, directory=str(tmp_path))
    assert figures["partitions"] == [500, 500, 500, 500]
