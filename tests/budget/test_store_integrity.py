"""A damaged store file is one line naming it and exit 2 -- in `spend`, `enforce` and `store check` --
never a DuckDB or pyarrow traceback and never a wrong answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from budget.cli.spend import spend
from budget.cli.store import store_group
from budget.errors import StoreError
from budget.store.event_store import EventStore
from budget.store.manifest import Segment, read_manifest
from tests.budget.enforcer_process import CAPS_TOML
from tests.budget.store_helpers import usage_events, write_store

MARGINS = Path(sys.executable).with_name("margins")
DAMAGE = ("truncated", "overwritten", "deleted", "rewritten")


def damage(root: Path, segment: Segment, how: str) -> None:
    """Truncate, overwrite (same size), delete, or rewrite as valid Parquet of the same size whose first
    and last users trade places (so another user tops the month)."""
    path = root / segment.file
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "overwritten":
        path.write_bytes(bytes(i % 251 for i in range(len(data))))
    elif how == "deleted":
        path.unlink()
    else:
        table = pq.read_table(path)
        ids = table.column("user_id").to_pylist()
        ids[0], ids[-1] = ids[-1], ids[0]
        table = table.set_column(0, table.schema.field(0), pa.array(ids, pa.string()))
        pq.write_table(table, path, compression="zstd", row_group_size=1 << 20)
        assert path.stat().st_size == len(data)  # the size alone cannot tell


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "s"
    write_store(root, [80])  # one segment per month: November's rollup alone decides its top spender
    return root


def _newest(segments: list[Segment], month: str | None = None) -> Segment:
    return [s for s in segments if month is None or s.month == month][-1]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_rollup_is_one_line_in_spend_and_check(store: Path, how: str) -> None:
    rollup = _newest(read_manifest(store).rollup, "2026-11")
    top = ["margins spend", "--store", str(store), "--month", "2026-11", "--top", "1"]
    before = CliRunner().invoke(spend, top[1:])
    damage(store, rollup, how)
    if how == "rewritten":  # the file reads fine and would crown another user
        with duckdb.connect() as db:
            [(tops,)] = db.execute(
                "SELECT arg_max(user_id, spent_nanos) FROM read_parquet(?)", [str(store / rollup.file)]
            ).fetchall()
        assert tops != before.stdout.splitlines()[1].split()[0]
    result = CliRunner().invoke(spend, top[1:])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.exception is None or isinstance(result.exception, SystemExit)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"margins spend: event store {store}: {rollup.file} ")
    assert f"`margins store repair {store}`" in line
    check = CliRunner().invoke(store_group, ["check", str(store)])
    assert check.exit_code == 2
    [problem] = check.stderr.strip().splitlines()
    assert problem.startswith(f"margins store check: {store}: {rollup.file} ")


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_journal_segment_stops_the_enforcer_with_one_line(
    store: Path, tmp_path: Path, how: str
) -> None:
    with EventStore.open(store, flush_interval=None, offload=False) as writer:
        writer.append(usage_events(80, start=80))
    journal, other = read_manifest(store).journal
    damage(store, journal, "overwritten" if how == "rewritten" else how)
    if how == "rewritten":  # valid Parquet holding other events
        (store / journal.file).write_bytes((store / other.file).read_bytes())
    caps = tmp_path / "caps.toml"
    caps.write_text(CAPS_TOML)
    argv = [
        str(MARGINS),
        "enforce",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--store",
        str(store),
        "--config",
        str(caps),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"margins enforce: event store {store}: {journal.file} "), line


def test_compaction_never_merges_a_damaged_segment(store: Path) -> None:
    with EventStore.open(store, flush_interval=None, offload=True) as writer:
        for start in range(80, 100, 5):
            writer.append(usage_events(5, start=start))
            writer.flush()
        before = read_manifest(store)
        usage = _newest(before.usage, "2026-11")
        damage(store, usage, "overwritten")
        with pytest.raises(StoreError, match=f"{usage.file} is damaged"):
            writer.compact(min_segments=2)
        assert read_manifest(store) == before
