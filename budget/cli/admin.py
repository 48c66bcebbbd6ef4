"""`margins admin set`: change a user's cap, plan or time zone through the enforcer, and show the status it
then publishes.

The change travels as the admin message the enforcer consumes (margins/admin/users/<user>); the command
waits for the user's status on margins/status/<user> to show it, so a printed status is one the enforcer
applied. A message the enforcer rejects (an unknown plan, say) comes back as its dead letter.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import Any

import click

from budget.cli.broker_options import broker_options, broker_settings
from budget.errors import BudgetError, ConfigError

WHERE = "margins admin set"
DEADLETTER_TOPIC = "margins/deadletter"  # where the enforcer publishes what it could not apply


@click.group("admin")
def admin_group() -> None:
    """Set a user's cap, plan or time zone through the enforcer and show the status it then publishes."""


@admin_group.command("set")
@click.argument("user")
@click.option("--cap", "cap", default=None, help="The user's own monthly cap in USD (at most 9 decimals).")
@click.option("--plan", "plan", default=None, help="A plan named in the enforcer's caps config.")
@click.option("--timezone", "timezone", default=None, help="IANA time zone of the user's months.")
@broker_options
@click.option(
    "--timeout",
    "timeout_s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds to wait for the broker and for the enforcer to confirm.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def set_user(
    ctx: click.Context,
    user: str,
    cap: str | None,
    plan: str | None,
    timezone: str | None,
    broker_url: str,
    username: str | None,
    password_file: str | None,
    tls_ca: str | None,
    timeout_s: float,
    fmt: str,
) -> None:
    """Set USER's cap, plan or time zone (any of them; the others stay as they are), wait until the
    enforcer's status for USER shows the change, and print that status.

    Bad input: one line, exit 2. The enforcer rejecting the change or not confirming within --timeout:
    one line, exit 1.
    """
    import asyncio

    from budget.cli.status import render_status
    from budget.mqtt.one_shot import admin_client_id, first_answer
    from budget.mqtt.topics import ADMIN_PREFIX, status_topic

    try:
        wanted = admin_settings(user, cap, plan, timezone)  # its errors name the command already
        settings = broker_settings(broker_url, username, password_file, tls_ca, admin_client_id(username))
    except ConfigError as error:
        click.echo(str(error), err=True)
        ctx.exit(2)
    except BudgetError as error:
        click.echo(f"{WHERE}: {error}", err=True)
        ctx.exit(2)
    topic = ADMIN_PREFIX + user
    payload = json.dumps(wanted).encode()
    try:
        outcome = asyncio.run(
            first_answer(
                settings,
                (status_topic(user), DEADLETTER_TOPIC),
                lambda t, body, retained: confirmation(t, body, retained, topic, wanted),
                timeout_s,
                publish=(topic, payload),
            )
        )
    except BudgetError as error:
        click.echo(f"margins admin set: {error}", err=True)
        sys.exit(1)
    if outcome is None:
        click.echo(
            f"margins admin set: the enforcer did not confirm the change of {user!r} within {timeout_s:g}s "
            "(is `margins enforce` running on this broker?)",
            err=True,
        )
        sys.exit(1)
    if "rejected" in outcome:
        click.echo(f"margins admin set: the enforcer rejected the change: {outcome['rejected']}", err=True)
        sys.exit(1)
    click.echo(render_status(outcome, fmt), nl=False)


def admin_settings(user: str, cap: str | None, plan: str | None, timezone: str | None) -> dict[str, Any]:
    """The admin message's fields, checked as the enforcer checks them; raises ConfigError (a cap that is
    not a whole number of nano-dollars from 0, an unknown IANA zone, nothing to set, a bad user id)."""
    from budget.domain.config import check_timezone, usd_to_nanos
    from budget.mqtt.topics import ADMIN_PREFIX, topic_problem

    problem = topic_problem(ADMIN_PREFIX + user) if user and "/" not in user else "it must be one topic level"
    if problem is not None:
        raise ConfigError(WHERE, "USER", f"{user!r} cannot be a user id: {problem}")
    wanted: dict[str, Any] = {"user_id": user}
    if cap is not None:
        usd_to_nanos(cap, WHERE, "--cap")
        wanted["cap_usd"] = str(Decimal(cap))
    if plan is not None:
        if not plan:
            raise ConfigError(WHERE, "--plan", "expected a plan name, got ''")
        wanted["plan"] = plan
    if timezone is not None:
        wanted["timezone"] = check_timezone(timezone, WHERE, "--timezone")
    if len(wanted) == 1:
        raise ConfigError(WHERE, "options", "nothing to set: give --cap, --plan or --timezone")
    return wanted


def confirmation(
    topic: str, body: bytes, retained: bool, admin_topic: str, wanted: dict[str, Any]
) -> dict[str, Any] | None:
    """The status that shows `wanted` applied, {"rejected": detail} for the enforcer's dead letter of the
    admin message, or None for anything else. A retained status (sent on subscribing) predates the change
    and never confirms it."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    if topic == DEADLETTER_TOPIC:
        if message.get("topic") == admin_topic:
            return {"rejected": f"{message.get('reason')}: {message.get('detail')}"}
        return None
    if retained or not status_shows(message, wanted):
        return None
    return message


def status_shows(status: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a user's status has the cap, plan and time zone asked for."""
    from budget.domain.config import usd_to_nanos
    from budget.domain.prices import nanos_to_usd

    # The status shows a cap as the float nanos_to_usd gives: the same computation compares exactly.
    if "cap_usd" in wanted and status.get("cap_usd") != nanos_to_usd(usd_to_nanos(wanted["cap_usd"], "", "")):
        return False
    return all(status.get(name) == wanted[name] for name in ("plan", "timezone") if name in wanted)
