"""The SQL views and named queries behind `margins spend`, read in place from a store's Parquet segments
(or from every partition's store under a partitioned root: the same views over the union of their files).

A reader never opens the store for writing: it takes the manifest (a consistent list of immutable files,
see budget/store/manifest.py) and lets an in-memory DuckDB read those files, so it works while the enforcer
appends, at most one flush interval (about a second) behind it. It refuses a store whose manifest is
missing or stale (budget/store/recovery.py), and checks each file against the manifest's size and sha256
before a view reads it, so a damaged file is one StoreError naming it, never a wrong answer.

Views (all money in integer nano-dollars; `month` is "YYYY-MM" in the user's time zone):

- `usage`: one row per usage event, exactly the columns of events.USAGE_COLUMNS (source "live").
- `journal`: every event in append order: seq, type, ts, user_id, month, reason, body (tagged JSON).
- `rollup`: usage summed per (user, month) and per segment, written with each segment: user_id, month,
  spent_nanos, events, input_tokens, output_tokens (sum it again to combine segments).
- `spend_by_user_month`: user_id, month, spent_nanos, events, input_tokens, output_tokens (from `rollup`,
  so top spenders never scan the usage rows).
- `spend_by_model` / `spend_by_feature`: month, model (or feature), spent_nanos, events.
- `spend_by_day`: day (UTC date), month, spent_nanos, events.
- `users_over_soft_limit`: user_id, month, soft_at, capped_at (NULL until capped), cap_nanos and
  spent_nanos -- the users for whom the enforcer announced a LimitCrossed that month, judged against
  their own cap and plan at that moment.
- `dead_letters`: seq, ts, user_id, topic, reason, detail, payload, payload_encoding.
- `dead_letters_by_reason`: reason, dead_letters, first_ts, last_ts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from budget.domain.events import USAGE_COLUMNS
from budget.domain.prices import nanos_to_usd_text
from budget.errors import QueryError
from budget.store.integrity import verify_segments
from budget.store.manifest import JOURNAL_COLUMNS, ROLLUP_COLUMNS, Segment
from budget.store.partitioned import StoreCut, take_cuts

By = Literal["user", "model", "feature", "day"]
MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")

# The views over other views: name -> (SQL, the views it reads). The three base views -- usage, rollup,
# journal -- read the segments themselves.
_DERIVED_VIEWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "spend_by_user_month": (
        """
        SELECT user_id, month, sum(spent_nanos)::BIGINT AS spent_nanos, sum(events)::BIGINT AS events,
               sum(input_tokens)::BIGINT AS input_tokens, sum(output_tokens)::BIGINT AS output_tokens
        FROM rollup GROUP BY user_id, month""",
        ("rollup",),
    ),
    "spend_by_model": (
        """
        SELECT month, model, sum(cost_nanos)::BIGINT AS spent_nanos, count(*) AS events
        FROM usage GROUP BY month, model""",
        ("usage",),
    ),
    "spend_by_feature": (
        """
        SELECT month, feature, sum(cost_nanos)::BIGINT AS spent_nanos, count(*) AS events
        FROM usage GROUP BY month, feature""",
        ("usage",),
    ),
    "spend_by_day": (
        """
        SELECT CAST(timezone('UTC', ts) AS DATE) AS day, month, sum(cost_nanos)::BIGINT AS spent_nanos,
               count(*) AS events
        FROM usage GROUP BY day, month""",
        ("usage",),
    ),
    "users_over_soft_limit": (
        """
        SELECT user_id, month,
               min(ts) FILTER (WHERE json_extract_string(body, '$.limit') = 'soft') AS soft_at,
               min(ts) FILTER (WHERE json_extract_string(body, '$.limit') = 'cap') AS capped_at,
               max(CAST(json_extract(body, '$.cap_nanos') AS BIGINT)) AS cap_nanos,
               (SELECT coalesce(sum(u.cost_nanos), 0)::BIGINT FROM usage u
                 WHERE u.user_id = j.user_id AND u.month = j.month) AS spent_nanos
        FROM journal j WHERE type = 'limit_crossed' GROUP BY user_id, month""",
        ("journal", "usage"),
    ),
    "dead_letters": (
        """
        SELECT seq, ts, user_id, json_extract_string(body, '$.topic') AS topic, reason,
               json_extract_string(body, '$.detail') AS detail,
               json_extract_string(body, '$.payload') AS payload,
               json_extract_string(body, '$.payload_encoding') AS payload_encoding
        FROM journal WHERE type = 'dead_lettered'""",
        ("journal",),
    ),
    "dead_letters_by_reason": (
        """
        SELECT reason, count(*) AS dead_letters, min(ts) AS first_ts, max(ts) AS last_ts
        FROM journal WHERE type = 'dead_lettered' GROUP BY reason""",
        ("journal",),
    ),
}
VIEWS: tuple[str, ...] = ("usage", "rollup", "journal", *_DERIVED_VIEWS)


@dataclass(frozen=True, slots=True)
class UserSettings:
    """A user's settings as the store's UserConfigured events leave them (None: never set)."""

    cap_nanos: int | None
    plan: str | None
    timezone: str | None


@dataclass(frozen=True, slots=True)
class Result:
    """A query's column names and rows (plain Python values)."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        """Rows as dicts; every `*_nanos` column gains a `*_usd` string beside it (exact decimal)."""
        out = []
        for row in self.rows:
            record: dict[str, Any] = {}
            for name, value in zip(self.columns, row, strict=True):
                record[name] = value
                if name.endswith("_nanos") and isinstance(value, int):
                    record[name[: -len("_nanos")] + "_usd"] = nanos_to_usd_text(value)
            out.append(record)
        return out


def _parquet(files: Sequence[Path], columns: dict[str, str]) -> str:
    """A SQL relation over the files; an empty, typed relation when there are none."""
    if not files:
        typed = ", ".join(f"CAST(NULL AS {kind}) AS {name}" for name, kind in columns.items())
        return f"(SELECT {typed} WHERE false)"
    listed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    return f"read_parquet([{listed}])"


class SpendReader:
    """A read-only view of a store at one manifest: DuckDB views over its segments.

    `root` may also be a partitioned root (`root/partition=<p>/`, one store each; see
    budget.store.partitioned): then each view is the union of every partition's segments, each partition
    read at its own cut. A user lives in one partition, so per-user figures are exact; totals over users
    are the sum of N cuts taken a few ms apart. `journal.seq` counts within each partition: over a
    partitioned root seqs repeat across partitions, so order by seq only within one user.

    `month` narrows `usage` (and so every spend view) to that month's partition, read from the manifest
    without opening other months' files. A view is created when the first query that reads it runs:
    binding a view over Parquet files costs more than a small query, and `margins spend --top` reads
    only `rollup`.
    """

    def __init__(self, root: str | Path, month: str | None = None) -> None:
        self.root = Path(root)
        if month is not None:
            check_month(month)
        # One cut per store: the store itself, or each partition of a partitioned root (a few ms apart).
        self.cuts: list[StoreCut] = take_cuts(self.root)
        self.db = duckdb.connect(":memory:")

        def of_month(segments: list[Segment]) -> list[Segment]:
            return [s for s in segments if month is None or s.month == month]

        self._segments: dict[str, tuple[list[tuple[Path, list[Segment]]], dict[str, str]]] = {
            "usage": ([(c.root, of_month(c.manifest.usage)) for c in self.cuts], USAGE_COLUMNS),
            "rollup": ([(c.root, of_month(c.manifest.rollup)) for c in self.cuts], ROLLUP_COLUMNS),
            "journal": ([(c.root, list(c.manifest.journal)) for c in self.cuts], JOURNAL_COLUMNS),
        }
        self._created: set[str] = set()

    def _create_views(self, names: Iterable[str]) -> None:
        """Create the named views not created yet, each after the views it reads."""
        for name in names:
            if name in self._created:
                continue
            if name in self._segments:
                stores, columns = self._segments[name]
                files: list[Path] = []
                for root, segments in stores:
                    verify_segments(root, segments)
                    files += [root / s.file for s in segments]
                self.db.execute(f"CREATE VIEW {name} AS SELECT * FROM {_parquet(files, columns)}")
            else:
                sql, reads = _DERIVED_VIEWS[name]
                self._create_views(reads)
                self.db.execute(f"CREATE VIEW {name} AS {sql}")
            self._created.add(name)

    def sql(self, text: str, params: Sequence[object] = (), views: Iterable[str] = VIEWS) -> Result:
        """Run SQL against the views; raises QueryError with DuckDB's message on bad SQL.

        `views` names the views the query reads (default: all of them, for SQL that could name any)."""
        self._create_views(views)
        try:
            cursor = self.db.execute(text, list(params))
            rows = cursor.fetchall()
        except duckdb.Error as error:
            raise QueryError("sql", str(error).splitlines()[0]) from error
        columns = tuple(d[0] for d in cursor.description or ())
        return Result(columns, rows)

    def top_spenders(self, month: str, limit: int = 20, user: str | None = None) -> Result:
        """The users who spent most in `month`: user_id, spent_nanos, events (ties by user id).

        Reads the per-segment rollups, not the usage rows: a month of 10M events is a few segments' worth
        of per-user sums."""
        where, params = _filters(month, user)
        return self.sql(
            "SELECT user_id, sum(spent_nanos)::BIGINT AS spent_nanos, sum(events)::BIGINT AS events "
            f"FROM rollup {where} GROUP BY user_id ORDER BY spent_nanos DESC, user_id LIMIT ?",
            [*params, limit],
            views=("rollup",),
        )

    def spend_by(self, by: By, month: str, limit: int = 20, user: str | None = None) -> Result:
        """Spend in `month` by user, model, feature or UTC day (days in order, the others largest first)."""
        if by == "user":
            return self.top_spenders(month, limit, user)
        key = {"model": "model", "feature": "feature", "day": "CAST(timezone('UTC', ts) AS DATE)"}[by]
        order = "day" if by == "day" else "spent_nanos DESC, " + by
        where, params = _filters(month, user)
        return self.sql(
            f"SELECT {key} AS {by}, sum(cost_nanos)::BIGINT AS spent_nanos, count(*) AS events FROM usage "
            f"{where} GROUP BY {by} ORDER BY {order} LIMIT ?",
            [*params, limit],
            views=("usage",),
        )

    def user_months(self, user: str) -> Result:
        """One user's spend per month, newest first."""
        return self.sql(
            "SELECT user_id, month, spent_nanos, events FROM spend_by_user_month WHERE user_id = ? "
            "ORDER BY month DESC",
            [user],
            views=("spend_by_user_month",),
        )

    def user_settings(self, users: Sequence[str]) -> dict[str, UserSettings]:
        """What admins last set for each of `users` that has a UserConfigured event: each setting from the
        latest event that set it (an event's unset field leaves the setting as it was)."""
        if not users:
            return {}
        marks = ", ".join("?" for _ in users)
        result = self.sql(
            f"""
            SELECT user_id,
                   arg_max(json_extract_string(body, '$.cap_nanos'), seq)
                       FILTER (WHERE json_extract_string(body, '$.cap_nanos') IS NOT NULL),
                   arg_max(json_extract_string(body, '$.plan'), seq)
                       FILTER (WHERE json_extract_string(body, '$.plan') IS NOT NULL),
                   arg_max(json_extract_string(body, '$.timezone'), seq)
                       FILTER (WHERE json_extract_string(body, '$.timezone') IS NOT NULL)
            FROM journal WHERE type = 'user_configured' AND user_id IN ({marks}) GROUP BY user_id""",
            list(users),
            views=("journal",),
        )
        return {
            user: UserSettings(None if cap is None else int(cap), plan, timezone)
            for user, cap, plan, timezone in result.rows
        }

    def users_over_soft_limit(self, month: str) -> Result:
        """Users the enforcer announced over their soft limit (or at the cap) in `month`."""
        return self.sql(
            "SELECT * FROM users_over_soft_limit WHERE month = ? ORDER BY soft_at, user_id",
            [month],
            views=("users_over_soft_limit",),
        )

    def dead_letters_by_reason(self) -> Result:
        """Dead letters counted by reason."""
        return self.sql(
            "SELECT * FROM dead_letters_by_reason ORDER BY dead_letters DESC, reason",
            views=("dead_letters_by_reason",),
        )

    def close(self) -> None:
        """Release the DuckDB connection."""
        self.db.close()

    def __enter__(self) -> SpendReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _filters(month: str, user: str | None) -> tuple[str, list[object]]:
    if user is None:
        return "WHERE month = ?", [month]
    return "WHERE month = ? AND user_id = ?", [month, user]


def check_month(month: str) -> str:
    """A "YYYY-MM" month, or QueryError."""
    if not MONTH_RE.match(month):
        raise QueryError("--month", f"expected YYYY-MM (e.g. 2026-11), got {month!r}")
    return month
