"""Partitioned enforcers on a three-node NATS cluster (real nats-server processes on loopback): how fast one
enforcer decides usage, and how long a partition goes undecided when its enforcer or a NATS node dies.

    uv run python -m benchmarks.failover [--rounds 3] [--events 5000] [--lease-ttl 4]

Per round, on a fresh cluster of 4 partitions:
- throughput: `--events` usage reports published at once (JetStream-acknowledged, 64 in flight); the
  baseline is the same publish with no enforcer running (the cluster storing them), then the time until
  one enforcer has decided, committed (journal + store) and acknowledged every one;
- failover: with alpha holding every partition and beta watching, alpha is SIGKILLed; then (alpha
  restarted, holding nothing) the NATS node leading the most streams is SIGKILLed. Each is timed from the
  kill until an authorization in every partition is answered (an application re-asking every 3 s, as
  `budget.client` does); the baseline is the same authorizations with nothing killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from budget.jetstream.streams import ensure_partition_streams
from tests.budget.enforcer_process import CAPS_TOML
from tests.budget.mqtt_helpers import usage_body
from tests.budget.nats_cluster import NatsCluster
from tests.budget.partitioned_helpers import (
    PartitionedProcess,
    authorize_until_answered,
    connected,
    publish_all,
    user_in,
    wait_until_decided,
    wait_until_held_by,
)


def usage(count: int, tag: str) -> list[tuple[str, bytes, str]]:
    now = datetime.now(UTC).isoformat()
    return [
        (
            f"margins.usage.u{i % 1000}",
            json.dumps(usage_body(f"{tag}{i}", user=f"u{i % 1000}", ts=now)).encode(),
            f"{tag}{i}",
        )
        for i in range(count)
    ]


async def answered_in_every_partition(cluster: NatsCluster, tag: str) -> float:
    """Seconds until an authorization in each partition is answered."""
    started = time.monotonic()
    async with connected(cluster) as (nc, js):
        await asyncio.gather(
            *(
                authorize_until_answered(nc, js, user_in(p, cluster.partitions, tag), f"{tag}-{p}", (10, 10))
                for p in range(cluster.partitions)
            )
        )
    return time.monotonic() - started


async def publish_seconds(cluster: NatsCluster, messages: list[tuple[str, bytes, str]]) -> float:
    """Seconds to have the cluster store `messages` (its partition streams created first, as an enforcer
    would at its start)."""
    async with connected(cluster) as (_nc, js):
        await ensure_partition_streams(js, cluster.partitions)
        started = time.monotonic()
        await publish_all(js, messages, window=64)
    return time.monotonic() - started


async def decided_seconds(cluster: NatsCluster) -> float:
    started = time.monotonic()
    async with connected(cluster) as (_nc, js):
        await wait_until_decided(js, cluster.partitions)
    return time.monotonic() - started


def one_round(directory: Path, events: int, lease_ttl: float) -> dict[str, float]:
    cluster = NatsCluster(directory / "nats")
    caps = directory / "caps.toml"
    caps.write_text(CAPS_TOML)
    store = directory / "store"
    alpha = PartitionedProcess(cluster, store, caps, "alpha", lease_ttl_s=lease_ttl)
    beta = PartitionedProcess(cluster, store, caps, "beta", lease_ttl_s=lease_ttl)
    figures: dict[str, float] = {}
    try:
        cluster.start()
        stored = asyncio.run(publish_seconds(cluster, usage(events, "b")))  # nobody consumes yet
        figures["cluster stores usage/s (no enforcer)"] = events / stored
        alpha.start()
        wait_until_held_by(cluster, "alpha")
        decided = asyncio.run(decided_seconds(cluster))
        figures["one enforcer decides usage/s (4 partitions)"] = events / decided
        figures["authorization in every partition, nothing killed (s)"] = asyncio.run(
            answered_in_every_partition(cluster, "base")
        )
        beta.start()
        alpha.kill()
        figures["enforcer SIGKILL -> every partition answers (s)"] = asyncio.run(
            answered_in_every_partition(cluster, "kill")
        )
        wait_until_held_by(cluster, "beta")
        cluster.sigkill(cluster.busiest_node())
        figures["NATS node SIGKILL -> every partition answers (s)"] = asyncio.run(
            answered_in_every_partition(cluster, "node")
        )
    finally:
        alpha.kill()
        beta.kill()
        cluster.kill()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--lease-ttl", type=float, default=4.0)
    args = parser.parse_args()
    rounds: list[dict[str, float]] = []
    for index in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="margins-failover-") as directory:
            figures = one_round(Path(directory), args.events, args.lease_ttl)
        rounds.append(figures)
        load = os.getloadavg()[0]
        print(
            f"round {index + 1}: "
            + "; ".join(f"{k} {v:.2f}" for k, v in figures.items())
            + f" (load {load:.1f})"
        )
    print(
        f"\n{args.rounds} rounds, lease TTL {args.lease_ttl} s, {args.events} usage reports (median, range):"
    )
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        print(f"  {key}: {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
