"""`margins status USER`: a user's retained status from the broker, or their month's spend from the store
when the broker cannot be reached."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from budget.cli.broker_options import broker_options, broker_settings
from budget.errors import BrokerRefused, BrokerUnavailable, BudgetError

STATUS_FIELDS = (
    "user_id",
    "month",
    "spent_usd",
    "reserved_usd",
    "cap_usd",
    "remaining_usd",
    "state",
    "plan",
    "timezone",
)


@click.command("status")
@click.argument("user")
@broker_options
@click.option(
    "--store",
    "store",
    default=None,
    type=click.Path(path_type=Path, file_okay=False),
    help="The event store: read when the broker cannot be reached.",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds to wait for the broker and for the user's status.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def status(
    ctx: click.Context,
    user: str,
    broker_url: str,
    username: str | None,
    password_file: str | None,
    tls_ca: str | None,
    store: Path | None,
    timeout_s: float,
    fmt: str,
) -> None:
    """A user's status from the enforcer (retained), or their month's spend from the store.

    USER's status as the enforcer last published it (retained on margins/status/USER): month, spent,
    reserved, cap, remaining, state, plan and time zone.

    When the broker cannot be reached and --store is given, USER's spend this month from the store
    instead (read without the enforcer's lock, about a second behind it), marked as from the store.
    Bad input: one line, exit 2; no status, or no broker and no store: one line, exit 1.
    """
    import asyncio

    from budget.mqtt.one_shot import admin_client_id, first_answer
    from budget.mqtt.topics import status_topic, topic_problem

    try:
        settings = broker_settings(broker_url, username, password_file, tls_ca, admin_client_id(username))
    except BudgetError as error:
        click.echo(f"margins status: {error}", err=True)
        ctx.exit(2)
    problem = topic_problem(status_topic(user)) if user and "/" not in user else "it must be one topic level"
    if problem is not None:
        click.echo(f"margins status: USER: {user!r} cannot be a user id: {problem}", err=True)
        ctx.exit(2)
    try:
        found = asyncio.run(first_answer(settings, (status_topic(user),), _status_of, timeout_s))
    except BrokerUnavailable as error:
        if store is None:
            click.echo(f"margins status: {error}; give --store to read the store instead", err=True)
            sys.exit(1)
        click.echo(f"margins status: {error}; reading the store instead", err=True)
        _from_store(ctx, store, user, fmt)
        return
    except (BrokerRefused, BudgetError) as error:
        click.echo(f"margins status: {error}", err=True)
        sys.exit(1)
    if found is None:
        click.echo(
            f"margins status: no status for {user!r} within {timeout_s:g}s (no spend recorded yet?)", err=True
        )
        sys.exit(1)
    click.echo(render_status(found, fmt), nl=False)


def _status_of(topic: str, body: bytes, retained: bool) -> dict[str, Any] | None:
    try:
        message = json.loads(body)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _from_store(ctx: click.Context, store: Path, user: str, fmt: str) -> None:
    try:
        found = store_status(store, user, datetime.now(UTC))
    except BudgetError as error:
        click.echo(f"margins status: {error}", err=True)
        ctx.exit(2)
    click.echo(render_status(found, fmt), nl=False)


def store_status(store: Path, user: str, now: datetime) -> dict[str, Any]:
    """USER's spend in their current month (in the time zone an admin set, else UTC) from the store, with
    the cap an admin set if any; marked "source": "store"."""
    from budget.domain.months import month_in
    from budget.domain.prices import nanos_to_usd_text
    from budget.store.queries import SpendReader

    with SpendReader(store) as reader:
        settings = reader.user_settings([user]).get(user)
        timezone = settings.timezone if settings is not None and settings.timezone else "UTC"
        month = month_in(now, timezone)
        rows = reader.top_spenders(month, 1, user).rows
    spent = int(rows[0][1]) if rows else 0
    cap = settings.cap_nanos if settings is not None else None
    return {
        "user_id": user,
        "month": month,
        "spent_usd": nanos_to_usd_text(spent),
        "cap_usd": "-" if cap is None else nanos_to_usd_text(cap),
        "plan": settings.plan if settings is not None else None,
        "timezone": timezone,
        "source": "store",
    }


def render_status(status: dict[str, Any], fmt: str) -> str:
    """A status as JSON, or as aligned "field  value" lines (a store's status says where it came from)."""
    if fmt == "json":
        return json.dumps(status, indent=1) + "\n"
    names = [n for n in STATUS_FIELDS if n in status] + [n for n in status if n not in STATUS_FIELDS]
    width = max(len(n) for n in names)
    lines = [f"{n.ljust(width)}  {'-' if status[n] is None else status[n]}" for n in names]
    if status.get("source") == "store":
        lines.append("(from the store: the broker could not be reached; reservations are not shown)")
    return "\n".join(lines) + "\n"
