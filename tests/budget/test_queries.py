"""Spend views and `margins spend`, read in place from the store's segments, also while a writer appends."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from budget.cli.spend import spend
from budget.domain.events import DeadLettered, Event, LimitCrossed, UsageRecorded
from budget.domain.prices import nanos_to_usd_text
from budget.store.event_store import EventStore
from budget.store.queries import VIEWS, SpendReader

REPO = Path(__file__).resolve().parents[2]
MARGINS = Path(sys.executable).with_name("margins")
T0 = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)


def usage(i: int, users: int = 5) -> UsageRecorded:
    ts = T0 + timedelta(minutes=7 * i)
    return UsageRecorded(
        event_id=f"e{i}",
        user_id=f"u{i % users}",
        ts=ts,
        model=("gpt-4o", "gpt-4o-mini")[i % 2],
        input_tokens=100,
        output_tokens=10,
        cost_nanos=1_000 * (1 + i % 4),
        feature=("chat", "search", "summary")[i % 3],
        month=ts.strftime("%Y-%m"),
    )


EVENTS: list[Event] = [
    *(usage(i) for i in range(600)),
    LimitCrossed(
        user_id="u3", ts=T0, month="2026-11", limit="soft", spent_nanos=8, reserved_nanos=0, cap_nanos=10
    ),
    LimitCrossed(
        user_id="u3", ts=T0, month="2026-11", limit="cap", spent_nanos=10, reserved_nanos=0, cap_nanos=10
    ),
    DeadLettered.of(ts=T0, topic="margins/usage/u1", payload=b"{", reason="bad_json"),
    DeadLettered.of(ts=T0, topic="margins/usage/u1", payload=b"\xff", reason="bad_json"),
    DeadLettered.of(ts=T0, topic="margins/usage/u2", payload=b"{}", reason="unknown_model"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("q") / "store"
    with EventStore.open(root, flush_interval=None) as writer:
        for start in range(0, len(EVENTS), 100):
            writer.append(EVENTS[start : start + 100])
            writer.flush()
    return root


def expected_spend() -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for event in EVENTS:
        if isinstance(event, UsageRecorded):
            assert event.month is not None
            totals[(event.user_id, event.month)] += event.cost_nanos
    return totals


def test_spend_per_user_per_month_is_the_sum_of_the_events(store: Path) -> None:
    with SpendReader(store) as reader:
        rows = reader.sql("SELECT user_id, month, spent_nanos FROM spend_by_user_month").rows
    assert {(u, m): s for u, m, s in rows} == expected_spend()


def test_top_spenders_of_a_month(store: Path) -> None:
    november = {u: s for (u, m), s in expected_spend().items() if m == "2026-11"}
    ranked = sorted(november.items(), key=lambda kv: (-kv[1], kv[0]))
    with SpendReader(store) as reader:
        top = reader.top_spenders("2026-11", limit=3)
        assert [(u, s) for u, s, _ in top.rows] == ranked[:3]
        assert top.records()[0]["spent_usd"] == nanos_to_usd_text(ranked[0][1])
        assert reader.top_spenders("2026-11", limit=3, user="u4").rows[0][0] == "u4"
        assert reader.top_spenders("2031-01").rows == []


def test_spend_by_model_feature_and_day(store: Path) -> None:
    november = [e for e in EVENTS if isinstance(e, UsageRecorded) and e.month == "2026-11"]
    with SpendReader(store) as reader:
        for by in ("model", "feature"):
            expected: Counter[str] = Counter()
            for e in november:
                expected[getattr(e, by)] += e.cost_nanos
            rows = reader.spend_by(by, "2026-11", limit=50).rows
            assert {key: spent for key, spent, _ in rows} == dict(expected)
        days = reader.spend_by("day", "2026-11", limit=50).rows
        assert [str(d) for d, _, _ in days] == sorted({e.ts.date().isoformat() for e in november})
        assert sum(s for _, s, _ in days) == sum(e.cost_nanos for e in november)


def test_users_over_the_soft_limit_and_dead_letters_by_reason(store: Path) -> None:
    with SpendReader(store) as reader:
        [over] = reader.users_over_soft_limit("2026-11").records()
        assert over["user_id"] == "u3" and over["capped_at"] is not None and over["cap_nanos"] == 10
        assert over["spent_nanos"] == expected_spend()[("u3", "2026-11")]
        assert reader.dead_letters_by_reason().rows[0][:2] == ("bad_json", 2)
        payloads = reader.sql("SELECT payload, payload_encoding FROM dead_letters ORDER BY seq").rows
        assert payloads[:2] == [("{", "utf-8"), ("/w==", "base64")]


def test_a_month_reader_opens_only_that_months_files(store: Path, tmp_path: Path) -> None:
    with SpendReader(store, month="2026-10") as reader:
        assert reader.sql("SELECT DISTINCT month FROM usage").rows == [("2026-10",)]


def _views(reader: SpendReader) -> set[str]:
    return {
        name
        for (name,) in reader.db.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    }


def test_a_named_query_creates_only_the_views_it_reads(store: Path) -> None:
    with SpendReader(store) as reader:
        assert _views(reader) == set()
        reader.top_spenders("2026-11")
        assert _views(reader) == {"rollup"}
        reader.user_months("u1")
        assert _views(reader) == {"rollup", "spend_by_user_month"}
        reader.users_over_soft_limit("2026-11")
        assert _views(reader) == {
            "rollup",
            "spend_by_user_month",
            "usage",
            "journal",
            "users_over_soft_limit",
        }


def test_sql_of_ones_own_sees_every_view(store: Path) -> None:
    documented = {  # budget/store/queries.py and the README's table of views
        *("usage", "rollup", "journal", "spend_by_user_month", "spend_by_model", "spend_by_feature"),
        *("spend_by_day", "users_over_soft_limit", "dead_letters", "dead_letters_by_reason"),
    }
    assert set(VIEWS) == documented
    with SpendReader(store) as reader:
        assert reader.sql("SELECT 1").rows == [(1,)]
        assert _views(reader) == documented


def test_margins_spend_formats(store: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(spend, ["--store", str(store), "--month", "2026-11", "--top", "2"])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == ["user_id", "spent_usd", "events", "cap_usd", "pct_of_cap"] and len(lines) == 3
    assert all(line.split()[-2:] == ["-", "-"] for line in lines[1:])  # no admin set a cap, no --config
    as_json = runner.invoke(
        spend, ["--store", str(store), "--month", "2026-11", "--by", "model", "--format", "json"]
    )
    records = json.loads(as_json.output)
    assert {r["model"] for r in records} == {"gpt-4o", "gpt-4o-mini"}
    assert all(r["spent_usd"] == nanos_to_usd_text(r["spent_nanos"]) for r in records)
    as_csv = runner.invoke(spend, ["--store", str(store), "--user", "u1", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert {r["month"] for r in rows} == {"2026-10", "2026-11"}
    sql = runner.invoke(
        spend, ["--store", str(store), "--sql", "SELECT count(*) AS n FROM usage", "--format", "json"]
    )
    assert json.loads(sql.output) == [{"n": 600}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "{empty}"], "not a margins event store"),
        (["--store", "{store}", "--month", "2026-13"], "expected YYYY-MM"),
        (["--store", "{store}", "--month", "November"], "expected YYYY-MM"),
        (["--store", "{store}", "--sql", "SELEC 1"], "syntax error"),
        (["--store", "{store}", "--sql", "SELECT * FROM nowhere"], "nowhere"),
    ],
)
def test_bad_input_is_one_message_and_exit_code_2(
    store: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", store=store) for a in args]
    result = CliRunner().invoke(spend, argv)
    assert result.exit_code == 2
    assert message in result.stderr and result.stdout == ""
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_margins_command_reports_a_missing_store_without_a_traceback(tmp_path: Path) -> None:
    argv = [str(MARGINS), "spend", "--store", str(tmp_path / "missing")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"margins spend: event store {tmp_path / 'missing'}: no such directory"


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime, timedelta
    from budget.domain.events import UsageRecorded
    from budget.store.event_store import EventStore

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    with EventStore.open(sys.argv[1], flush_interval=0.1) as store:
        n = 0
        while True:
            store.append([
                UsageRecorded(event_id=f"e{n + i}", user_id=f"u{(n + i) % 17}",
                              ts=t0 + timedelta(seconds=n + i), model="gpt-4o-mini", input_tokens=10,
                              output_tokens=1, cost_nanos=2_100, month="2026-11")
                for i in range(50)
            ])
            n += 50
            print(n, flush=True)
    """
)


def test_margins_spend_from_another_process_while_the_writer_appends(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "s")], stdout=subprocess.PIPE, env=env
    )
    assert writer.stdout is not None
    # The spend command in its own process (`python -m` spares the whole `margins` group's imports).
    query = [
        sys.executable,
        "-m",
        "budget.cli.spend",
        "--store",
        str(tmp_path / "s"),
        "--format",
        "json",
        "--sql",
    ]
    sql = "SELECT count(*) AS n, coalesce(sum(cost_nanos), 0) AS spent_nanos FROM usage"
    try:
        seen: list[int] = []
        caught_up = 0
        deadline = time.monotonic() + 40
        while caught_up < 3 and time.monotonic() < deadline:
            acknowledged = int(writer.stdout.readline())  # durable before we ask
            asked = time.monotonic()
            while True:
                result = subprocess.run(
                    [*query, sql], capture_output=True, text=True, timeout=30, env=env, cwd=REPO
                )
                assert result.returncode == 0, result.stderr
                [row] = json.loads(result.stdout)
                assert row["spent_nanos"] == 2_100 * row["n"]
                seen.append(row["n"])
                if row["n"] >= acknowledged:
                    caught_up += 1
                    break
                assert time.monotonic() - asked < 5, (
                    f"{row['n']} rows visible 5 s after {acknowledged} appended"
                )
        assert caught_up == 3
        assert seen == sorted(seen)  # a reader never sees the store go back
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.wait(timeout=10)
        writer.stdout.close()


def test_a_month_query_checks_its_files_without_loading_pyarrow_numpy_or_polars(store: Path) -> None:
    """The files are checked by sha256 (hashlib): `margins spend` starts no slower for it."""
    argv = [sys.executable, "-X", "importtime", "-m", "budget.cli.spend", "--store", str(store)]
    result = subprocess.run(
        [*argv, "--month", "2026-11", "--top", "1"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.startswith("user_id"), result.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if "import time:" in line
    }
    assert "duckdb" in imported and not imported & {"pyarrow", "numpy", "polars"}
