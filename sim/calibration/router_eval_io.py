"""The edges of the router eval: eval set and rules files in, DuckDB history and a shares fragment out."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from sim.calibration.router_eval import LABELS, Confusion, Example, Rules, parse_rules
from sim.errors import EvalSetError, RulesError, UnreadableFile
from sim.io.user_files import read_text


def load_rules(path: str | Path) -> Rules:
    """Read and validate a rules file (TOML); every error names the file and the field."""
    where = str(path)
    try:
        data = tomllib.loads(read_text(path))
    except UnreadableFile as error:
        raise RulesError(where, "(file)", error.reason) from None
    except tomllib.TOMLDecodeError as error:
        raise RulesError(where, "(file)", f"not valid TOML: {error}") from None
    return parse_rules(data, where)


def read_eval_set(path: str | Path) -> list[Example]:
    """Read an eval set: JSON lines {"text": ..., "label": "easy" | "hard"}; other keys (source, intent)
    are kept for the reader and ignored here. Blank lines are skipped; both labels must be present."""
    where = str(path)
    try:
        lines = read_text(path).splitlines()
    except UnreadableFile as error:
        raise EvalSetError(where, None, error.reason) from None
    examples = [_example(line, number, where) for number, line in enumerate(lines, 1) if line.strip()]
    for label in LABELS:
        if not any(e.label == label for e in examples):
            raise EvalSetError(
                where, None, f"no {label!r} requests; both labels are needed to measure shares"
            )
    return examples


def _example(line: str, number: int, where: str) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise EvalSetError(where, number, f"not JSON: {error.msg}") from None
    if not isinstance(row, dict):
        raise EvalSetError(where, number, 'expected an object {"text": ..., "label": ...}')
    text, label = row.get("text"), row.get("label")
    if not isinstance(text, str) or not text.strip():
        raise EvalSetError(where, number, "text: missing or not a non-empty string")
    if label not in LABELS:
        got = "missing" if label is None else f"got {label!r}"
        raise EvalSetError(where, number, f'label: expected "easy" or "hard", {got}')
    return Example(text=text, label=label, line=number)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One eval run as the history table keeps it."""

    run_at: dt.datetime
    set_path: str
    set_sha256: str
    rules_path: str
    rules_sha256: str
    confusion: Confusion

    def figures(self) -> dict[str, float]:
        c = self.confusion
        return {
            "accuracy": c.accuracy,
            "hard_to_expensive": c.hard_to_expensive,
            "easy_to_expensive": c.easy_to_expensive,
        }


_COLUMNS = (
    "run_at TIMESTAMPTZ, set_path VARCHAR, set_sha256 VARCHAR, rules_path VARCHAR, rules_sha256 VARCHAR, "
    "n BIGINT, easy_cheap BIGINT, easy_expensive BIGINT, hard_cheap BIGINT, hard_expensive BIGINT, "
    "accuracy DOUBLE, hard_to_expensive DOUBLE, easy_to_expensive DOUBLE"
)


def record_run(db: str | Path, record: RunRecord) -> RunRecord | None:
    """Append the run to table `router_eval_runs`; returns the previous run of the same set (same sha256),
    so a caller can show what changed. Runs are never rewritten: the table is the history."""
    import duckdb  # only a run recorded into a file pays for loading DuckDB

    c = record.confusion
    with duckdb.connect(str(db)) as connection:
        connection.execute(f"CREATE TABLE IF NOT EXISTS router_eval_runs ({_COLUMNS})")
        previous = connection.execute(
            "SELECT run_at, set_path, set_sha256, rules_path, rules_sha256, easy_cheap, easy_expensive, "
            "hard_cheap, hard_expensive FROM router_eval_runs WHERE set_sha256 = ? "
            "ORDER BY run_at DESC LIMIT 1",
            [record.set_sha256],
        ).fetchone()
        connection.execute(
            "INSERT INTO router_eval_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                record.run_at,
                record.set_path,
                record.set_sha256,
                record.rules_path,
                record.rules_sha256,
                c.total,
                c.easy_cheap,
                c.easy_expensive,
                c.hard_cheap,
                c.hard_expensive,
                c.accuracy,
                c.hard_to_expensive,
                c.easy_to_expensive,
            ],
        )
    if previous is None:
        return None
    run_at, set_path, set_sha, rules_path, rules_sha, *counts = previous
    return RunRecord(run_at, set_path, set_sha, rules_path, rules_sha, Confusion(*counts))


def shares_toml(record: RunRecord) -> str:
    """A scenario fragment carrying the measured shares: `extends` it, or copy its [router] keys."""
    confusion, set_path, set_sha256, rules_path = (
        record.confusion,
        record.set_path,
        record.set_sha256,
        record.rules_path,
    )
    return (
        f"# Router shares measured by `margins eval router` on {record.run_at.date().isoformat()}:\n"
        f"# set {set_path} (sha256 {set_sha256[:12]}), classifier {rules_path}.\n"
        f"# {confusion.total} requests ({confusion.hard} hard, {confusion.easy} easy), "
        f"accuracy {confusion.accuracy:.3f}.\n"
        "[router]\n"
        f"hard_to_expensive = {round(confusion.hard_to_expensive, 4)}\n"
        f"easy_to_expensive = {round(confusion.easy_to_expensive, 4)}\n"
    )
