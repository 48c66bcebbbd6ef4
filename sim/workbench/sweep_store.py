"""Write a sweep into DuckDB: one row per point, beside the forecast tables of `margins simulate --out`."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import duckdb

from sim.model.forecast import flatten
from sim.workbench.sweep import Sweep


def sweep_id(sweep: Sweep) -> str:
    """Names a sweep by what determines its numbers; rewriting the same sweep replaces its rows."""
    grid = json.dumps([list(p.settings) for p in sweep.points], sort_keys=True)
    digest = hashlib.blake2b(grid.encode(), digest_size=6).hexdigest()
    return f"{sweep.scenario}-s{sweep.seed}-m{sweep.mau}-d{sweep.days}-{digest}"


def write_sweep(path: str | Path, sweep: Sweep) -> str:
    """Store the sweep's points in table `sweep_points`; returns the sweep id."""
    identifier = sweep_id(sweep)
    now = dt.datetime.now(dt.UTC)
    with duckdb.connect(str(path)) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS sweep_points (sweep_id VARCHAR, scenario VARCHAR, seed BIGINT, "
            "mau BIGINT, days BIGINT, point BIGINT, label VARCHAR, settings JSON, "
            "cost_per_user_month_usd DOUBLE, cost_per_user_month_p90_usd DOUBLE, quality DOUBLE, "
            "on_frontier BOOLEAN, written_at TIMESTAMPTZ, figures JSON)"
        )
        connection.execute("DELETE FROM sweep_points WHERE sweep_id = ?", [identifier])
        connection.executemany(
            "INSERT INTO sweep_points VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [
                    identifier,
                    sweep.scenario,
                    sweep.seed,
                    sweep.mau,
                    sweep.days,
                    index,
                    point.label,
                    json.dumps(dict(point.settings)),
                    point.cost,
                    point.p90,
                    point.quality,
                    point.on_frontier,
                    now,
                    json.dumps(flatten(point.summary)),
                ]
                for index, point in enumerate(sweep.points)
            ],
        )
    return identifier
