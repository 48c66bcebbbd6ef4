"""`margins alerts`: forward the enforcer's alerts to a webhook until SIGINT / SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from budget.cli.broker_options import broker_options, broker_settings
from budget.errors import BudgetError

DEFAULT_CLIENT_ID = "margins-alerts"


@click.command("alerts")
@click.option("--webhook", "webhook_url", required=True, help="http(s) URL to POST each alert to (JSON)")
@broker_options
@click.option(
    "--state",
    "state_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="directory for the record of alerts already delivered (created if missing)",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="seconds one POST may take before it is retried",
)
@click.option(
    "--client-id",
    default=None,
    help=f"MQTT client id, the session the broker keeps [default: the username, else {DEFAULT_CLIENT_ID}]",
)
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def alerts(
    webhook_url: str,
    broker_url: str,
    username: str | None,
    password_file: str | None,
    tls_ca: str | None,
    state_dir: Path,
    timeout_s: float,
    client_id: str | None,
    log_level: str,
) -> None:
    """Forward soft, cap, overshoot and unknown-model alerts to a webhook as JSON.

    Each alert on margins/alerts/+ is posted with its own fields plus a Slack-compatible `text`, and its
    key as the Idempotency-Key header; in order, retried with backoff on connection errors, timeouts, 408,
    429 (after Retry-After) and 5xx; another 4xx is logged and dropped. An alert is acknowledged to the
    broker only once the webhook accepted it, and a redelivered one already posted is not posted again
    (the record under --state). Stops cleanly on SIGINT or SIGTERM. Bad flags or state: one line, exit 2.
    """
    import asyncio

    from budget.alerts.delivered import DeliveredRecord
    from budget.alerts.forwarder import AlertForwarder, run_until_stopped
    from budget.alerts.webhook import WebhookTarget

    logging.basicConfig(
        level=getattr(logging, log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx2 logs every request's full URL at INFO; a webhook's path usually holds its secret token.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        webhook = WebhookTarget.from_url(webhook_url)
        broker = broker_settings(
            broker_url, username, password_file, tls_ca, client_id or username or DEFAULT_CLIENT_ID
        )
        record = DeliveredRecord.open(state_dir)
    except BudgetError as error:
        click.echo(f"margins alerts: {error}", err=True)
        sys.exit(2)
    forwarder = AlertForwarder(broker, webhook, record, timeout_s=timeout_s)
    try:
        asyncio.run(run_until_stopped(forwarder, (signal.SIGINT, signal.SIGTERM)))
    except BudgetError as error:
        click.echo(f"margins alerts: {error}", err=True)
        sys.exit(1)
