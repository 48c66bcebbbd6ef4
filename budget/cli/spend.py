"""`margins spend`: live spend from a store's Parquet segments (or every partition's, under a partitioned
root), from any process, while the enforcer runs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from budget.errors import BudgetError

if TYPE_CHECKING:
    from budget.domain.config import EnforcerConfig
    from budget.store.queries import UserSettings

FORMATS = ("table", "json", "csv")


@click.command("spend")
@click.option(
    "--store",
    "store",
    required=True,
    type=click.Path(path_type=Path),
    help="The event store, or a partitioned root holding one per partition (partition=<p>/).",
)
@click.option("--month", default=None, help="YYYY-MM (default: the current UTC month).")
@click.option("--user", default=None, help="One user: their months, or with --by their breakdown.")
@click.option("--top", default=20, show_default=True, type=click.IntRange(1, 10_000_000), help="Rows.")
@click.option(
    "--by", "by", type=click.Choice(["user", "model", "feature", "day"]), default=None, help="Group by."
)
@click.option("--sql", "sql", default=None, help="Any SELECT over the views (see budget/store/queries.py).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The enforcer's caps config: the default or plan cap of users no admin gave a cap of their own.",
)
@click.pass_context
def spend(
    ctx: click.Context,
    store: Path,
    month: str | None,
    user: str | None,
    top: int,
    by: str | None,
    sql: str | None,
    fmt: str,
    config_path: Path | None,
) -> None:
    """What users spent: top spenders of a month, or spend by model, feature or day, or your own SQL.

    Reads the store's Parquet segments in place, so it runs beside a live enforcer (about a second behind).
    Views for --sql: usage, rollup, journal, spend_by_user_month, spend_by_model, spend_by_feature,
    spend_by_day, users_over_soft_limit, dead_letters, dead_letters_by_reason (money in *_nanos,
    1e-9 USD; --month narrows them to that month). Spend by user shows each user's cap and the % of it
    spent: the cap an admin last set (from the store), else with --config the user's plan's or the
    default cap, else "-". Bad input: one message, exit code 2.

    A partitioned root (STORE/partition=<p>/, one store per partition, p = 0, 1, ...) is read as one: the
    same views over the union of every partition's files, each partition read at its own cut. A user is
    in one partition, so per-user figures are exact; totals are the sum of N cuts taken a few ms apart.
    An empty partition directory (an enforcer that just took it) counts as no events. Local paths only
    (a network file system mounted as a path works; object storage does not).
    """
    from budget.service.settings import load_config
    from budget.store.queries import SpendReader, check_month

    try:
        if month is not None:
            check_month(month)
        every_month = sql is None and user is not None and by is None and month is None
        the_month = month or datetime.now(UTC).strftime("%Y-%m")
        # A month's query reads (and checks) only that month's files.
        narrowed = month if sql is not None else None if every_month else the_month
        with SpendReader(store, narrowed) as reader:
            if sql is not None:
                result = reader.sql(sql)
            elif every_month:
                result = reader.user_months(str(user))
            else:
                result = reader.spend_by(by or "user", the_month, top, user)  # type: ignore[arg-type]
            records = result.records()
            if sql is None and (by or "user") == "user":
                config = None if config_path is None else load_config(config_path)
                users = sorted({str(r["user_id"]) for r in records})
                records = with_caps(
                    records, reader.user_settings(users), config, unknown=None if fmt == "json" else "-"
                )
    except BudgetError as error:
        click.echo(f"margins spend: {error}", err=True)
        ctx.exit(2)
    click.echo(render(result.columns, records, fmt), nl=False)


def with_caps(
    records: list[dict[str, Any]],
    settings: Mapping[str, UserSettings],
    config: EnforcerConfig | None,
    unknown: str | None = "-",
) -> list[dict[str, Any]]:
    """Each user's record with cap_usd and pct_of_cap (spent_nanos as a % of the cap, one decimal) beside
    its spend: the cap an admin last set, else the plan's (or default) cap of `config`, else `unknown`."""
    from budget.domain.prices import nanos_to_usd_text

    out = []
    for record in records:
        cap = user_cap(settings.get(str(record["user_id"])), config)
        spent = record.get("spent_nanos")
        pct = f"{100 * spent / cap:.1f}" if cap and isinstance(spent, int) else unknown
        out.append(
            record | {"cap_usd": unknown if cap is None else nanos_to_usd_text(cap), "pct_of_cap": pct}
        )
    return out


def user_cap(settings: UserSettings | None, config: EnforcerConfig | None) -> int | None:
    """A user's cap in nano-dollars as the enforcer applies it, or None when the store and config do not
    tell: their own cap, else their plan's (a plan the config no longer names: the default)."""
    if settings is not None and settings.cap_nanos is not None:
        return settings.cap_nanos
    if config is None:
        return None
    plan = settings.plan if settings is not None else None
    return config.plans.get(plan, config.default_plan).cap_nanos if plan else config.default_plan.cap_nanos


def render(columns: tuple[str, ...], records: list[dict[str, Any]], fmt: str) -> str:
    """Records as an aligned table (money in USD), a JSON array, or CSV."""
    if fmt == "json":
        return json.dumps(records, default=str, indent=1) + "\n"
    names = list(records[0]) if records else list(columns)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    shown = [n for n in names if not (n.endswith("_nanos") and n[:-6] + "_usd" in names)]
    cells = [[_cell(r.get(n)) for n in shown] for r in records]
    widths = [max([len(n), *(len(row[i]) for row in cells)]) for i, n in enumerate(shown)]
    numeric = [all(_is_number(r.get(n)) for r in records) and bool(records) for n in shown]
    lines = [
        "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True))
        for row in [shown, *cells]
    ]
    if not records:
        lines.append("(no rows)")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def _is_number(value: object) -> bool:
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and value.replace(".", "", 1).lstrip("-").isdigit()


if __name__ == "__main__":
    spend()
