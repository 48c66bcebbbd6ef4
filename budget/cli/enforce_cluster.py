"""`margins enforce --nats ...`: the options of a partitioned enforcer on a NATS JetStream cluster, and its
run until SIGINT / SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from budget.errors import ConfigError

if TYPE_CHECKING:
    from budget.domain.config import EnforcerConfig
    from budget.partitioned.enforcer import ClusterSettings
    from budget.service.door import HttpSettings

F = TypeVar("F", bound=Callable[..., Any])


def cluster_options(command: F) -> F:
    """Add --nats, --partitions, --owner, --lease-ttl and --max-partitions to `margins enforce`."""
    for option in reversed(
        (
            click.option(
                "--nats",
                "nats_servers",
                default=None,
                metavar="URL[,URL...]",
                help="decide partitions on this NATS JetStream cluster (nats://HOST:PORT, any nodes) instead "
                "of --broker; needs --partitions",
            ),
            click.option(
                "--partitions",
                type=click.IntRange(1, 4096),
                default=None,
                help="the cluster's number of partitions (its nats-server mapping's N); with --nats",
            ),
            click.option(
                "--owner",
                default=None,
                help="this enforcer's name in the partition leases (default: HOST-PID); unique per process",
            ),
            click.option(
                "--lease-ttl",
                type=click.FloatRange(1.0, 300.0),
                default=4.0,
                show_default=True,
                help="seconds a partition's lease lasts unrenewed: another enforcer takes over after this",
            ),
            click.option(
                "--max-partitions",
                type=click.IntRange(1),
                default=None,
                help="hold at most this many partitions (default: as many as are free)",
            ),
        )
    ):
        command = option(command)
    return command


def cluster_settings(
    servers: str, partitions: int | None, owner: str | None, lease_ttl: float, max_partitions: int | None
) -> ClusterSettings:
    """The settings the options give; ConfigError naming the option that is wrong."""
    try:
        from budget.jetstream.lease import LeaseTerms
        from budget.partitioned.enforcer import ClusterSettings
    except ImportError as missing:
        needs = f"needs the nats extra: pip install 'margins[nats]' ({missing.name} is missing)"
        raise ConfigError("--nats", "install", needs) from None
    urls = tuple(url.strip() for url in servers.split(",") if url.strip())
    if not urls or any(not url.startswith(("nats://", "tls://")) for url in urls):
        expected = f"expected nats://HOST:PORT[,nats://HOST:PORT...], got {servers!r}"
        raise ConfigError("--nats", "url", expected)
    if partitions is None:
        raise ConfigError("--partitions", "value", "--nats needs the cluster's number of partitions")
    name = owner or f"{socket.gethostname()}-{os.getpid()}"
    terms = LeaseTerms(ttl_s=lease_ttl, safety_s=lease_ttl / 8)
    return ClusterSettings(urls, partitions, name, terms, max_partitions=max_partitions)


async def run_partitioned(
    cluster: ClusterSettings,
    store_root: str,
    config: EnforcerConfig,
    snapshot_every: int,
    http: HttpSettings | None = None,
) -> None:
    """Decide partitions until SIGINT / SIGTERM, then give them up cleanly (`http`: serve /metrics,
    /healthz and /readyz there)."""
    import asyncio

    from budget.partitioned.enforcer import PartitionedEnforcer

    async with PartitionedEnforcer(
        cluster, Path(store_root), config, snapshot_every_events=snapshot_every, http=http
    ) as enforcer:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, enforcer.request_stop)
        await enforcer.wait()
