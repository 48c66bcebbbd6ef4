"""`margins enforce`: run the live enforcer until SIGINT / SIGTERM."""

from __future__ import annotations

import faulthandler
import io
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import click

from budget.cli.broker_options import broker_settings, optional_broker_options
from budget.cli.enforce_cluster import cluster_options, cluster_settings, run_partitioned
from budget.cli.log_format import LOG_FORMATS, LogFormat, configure_logging
from budget.errors import BudgetError, JournalError, ListenError, StoreError
from budget.service.defaults import SNAPSHOT_EVERY_EVENTS
from budget.store.headroom import DEFAULT_MIN_FREE_MB, MIB

if TYPE_CHECKING:
    from budget.domain.config import EnforcerConfig
    from budget.mqtt.broker import BrokerSettings
    from budget.service.door import HttpSettings


@click.command()
@optional_broker_options
@cluster_options
@click.option("--store", "store_path", required=True, help="event store directory (created if missing)")
@click.option("--config", "config_path", required=True, help="caps config (TOML)")
@click.option("--client-id", default="margins-enforcer", show_default=True, help="MQTT client id (session)")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(LOG_FORMATS),
    help="stderr log lines: text for people, json for a log shipper (one object per line)",
)
@click.option(
    "--min-free-mb",
    default=DEFAULT_MIN_FREE_MB,
    show_default=True,
    type=click.IntRange(0),
    help="stop (exit 2) before the store's filesystem has less than this many MiB free",
)
@click.option(
    "--snapshot-every",
    default=SNAPSHOT_EVERY_EVENTS,
    show_default=True,
    type=click.IntRange(1),
    help="snapshot the ledger after this many events (and every 10 minutes with any); a restart replays "
    "only the events after the newest snapshot",
)
@click.option(
    "--http",
    "http_address",
    default=None,
    metavar="HOST:PORT",
    help="also serve the HTTP door there (/v1/authorize, /v1/usage, /v1/users/ID, /healthz, /readyz, "
    "/metrics, /openapi.json); applications' bearer tokens come from [http.apps.NAME] in the config. With "
    "--nats: /metrics, /healthz and /readyz only",
)
def enforce(
    broker_url: str | None,
    nats_servers: str | None,
    partitions: int | None,
    owner: str | None,
    lease_ttl: float,
    max_partitions: int | None,
    username: str | None,
    password_file: str | None,
    tls_ca: str | None,
    store_path: str,
    config_path: str,
    client_id: str,
    log_level: str,
    log_format: LogFormat,
    min_free_mb: int,
    snapshot_every: int,
    http_address: str | None,
) -> None:
    """Enforce per-user monthly caps: consume usage and authorizations over MQTT, publish decisions.

    A usage message is acknowledged to the broker only once its effect is durable in the store; a
    restart restores the newest ledger snapshot and replays the events after it. Stops cleanly (commit,
    acknowledge, flush, snapshot) on SIGINT or SIGTERM. A store whose files do not add up, or whose disk
    is below --min-free-mb, stops it with one line and exit 2.

    With --nats (instead of --broker) it is one of any number of enforcers on a NATS JetStream cluster:
    it decides the partitions whose lease it holds, each in its own store under --store
    (partition=<p>/), and takes over a partition whose enforcer stopped (README, "Scaling out").
    """
    from budget.service.door import HttpSettings
    from budget.service.settings import load_config

    configure_logging(log_level, log_format)
    _stacks_on_sigusr1()
    if (broker_url is None) == (nats_servers is None):
        raise click.UsageError("give either --broker (one MQTT broker) or --nats (a NATS JetStream cluster)")
    try:
        config = load_config(config_path)
        http = None if http_address is None else HttpSettings.parse(http_address)
        if nats_servers is not None:
            cluster = cluster_settings(nats_servers, partitions, owner, lease_ttl, max_partitions)
            _run_or_exit(run_partitioned(cluster, store_path, config, snapshot_every, http), log_format)
            return
        assert broker_url is not None
        broker = broker_settings(broker_url, username, password_file, tls_ca, client_id)
    except BudgetError as error:
        raise click.UsageError(str(error)) from error
    if http is not None and not config.http_apps:  # metrics and health alone are a fine reason for --http
        logging.getLogger("margins.enforce").warning(
            "%s has no [http.apps.NAME] token_sha256: /v1 routes on %s refuse every request (401); "
            "/metrics, /healthz and /readyz are served",
            config.source,
            http.address,
        )
    # The store's flusher thread turns events into Parquet each second; with the default 5 ms GIL switch
    # interval it can hold the event loop for that long at a time, which shows in authorization latency.
    sys.setswitchinterval(0.001)
    _run_or_exit(_run(broker, store_path, config, min_free_mb * MIB, snapshot_every, http), log_format)


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` writes every thread's stack to stderr, even while the event loop is stuck: what a
    process that no longer answers is doing, without stopping it. Not when stderr is no file (a test
    runner calling the command in-process): there is nothing to write to then."""
    try:
        stderr = sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return
    faulthandler.register(signal.SIGUSR1, file=stderr, all_threads=True)


def _run_or_exit(main: Coroutine[Any, Any, None], log_format: LogFormat) -> None:
    """Run the enforcer until it stops; a store, door or journal that cannot be used ends it with one
    line and exit 2, any other refusal with exit 1."""
    import asyncio

    try:
        asyncio.run(main)
    except (StoreError, ListenError, JournalError) as error:
        _exit_with(str(error), 2, log_format)
    except BudgetError as error:
        _exit_with(str(error), 1, log_format)


def _exit_with(message: str, code: int, log_format: LogFormat) -> None:
    """The one line a failed run ends with: as a log record when the log is JSON, so every line parses."""
    if log_format == "json":
        logging.getLogger("margins.enforce").error("margins enforce: %s", message, extra={"exit_code": code})
    else:
        click.echo(f"margins enforce: {message}", err=True)
    sys.exit(code)


async def _run(
    broker: BrokerSettings,
    store_path: str,
    config: EnforcerConfig,
    min_free_bytes: int,
    snapshot_every: int,
    http: HttpSettings | None,
) -> None:
    import asyncio

    from budget.service.enforcer import Enforcer

    async with Enforcer(
        broker,
        store_path,
        config,
        min_free_bytes=min_free_bytes,
        snapshot_every_events=snapshot_every,
        http=http,
    ) as enforcer:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, enforcer.request_stop)
        await enforcer.wait()
        logging.getLogger("margins.enforce").info("stopping: committing and acknowledging what was decided")
