"""`margins enforce --nats --http`: a partitioned enforcer's /metrics, /healthz and /readyz, served by a
real process on the three-node test cluster, and what the metrics say matches its partitions' stores."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from budget.domain.events import UsageRecorded
from budget.partitioned.owner import partition_store
from tests.budget.broker import free_port
from tests.budget.http_door_helpers import client, wait_for
from tests.budget.nats_cluster import NatsCluster
from tests.budget.partitioned_helpers import (
    PartitionedProcess,
    connected,
    publish_all,
    usage_messages,
    wait_for_owners,
    wait_until_decided,
)
from tests.budget.store_helpers import replayed

pytestmark = pytest.mark.timeout(300)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str) -> Samples:
    """Every sample of an exposition by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def by_partition(samples: Samples, name: str) -> dict[int, float]:
    """A per-partition series' values by partition."""
    return {
        int(dict(labels)["partition"]): value
        for (sample, labels), value in samples.items()
        if sample == name and "partition" in dict(labels)
    }


def test_a_partitioned_enforcer_serves_metrics_that_match_its_stores(
    nats_cluster: NatsCluster, tmp_path: Path, caps_file: Path
) -> None:
    port = free_port()
    enforcer = PartitionedProcess(
        nats_cluster, tmp_path / "store", caps_file, "metered", extra=["--http", f"127.0.0.1:{port}"]
    )
    partitions = nats_cluster.partitions
    messages, _ = usage_messages(120, seed=5)
    try:
        enforcer.start()
        with client(f"http://127.0.0.1:{port}") as http:
            assert http.get("/healthz").json() == {"alive": True}
            wait_for(
                lambda: http.get("/readyz").json() == {"ready": True, "partitions_held": partitions},
                "ready, holding every partition",
            )

            async def publish() -> None:
                async with connected(nats_cluster) as (_nc, js):
                    await wait_for_owners(js, partitions, lambda owners: set(owners.values()) == {"metered"})
                    await publish_all(js, messages)
                    await wait_until_decided(js, partitions)

            asyncio.run(publish())
            samples = scrape(http.get("/metrics", headers={"Authorization": ""}).text)
            refused = http.post("/v1/authorize", json={})
        assert enforcer.terminate() == 0
    finally:
        enforcer.kill()
    assert refused.status_code == 404 and refused.json()["reason"] == "not_served"
    for name, expected in [
        ("margins_partitions", partitions),
        ("margins_partitions_held", partitions),
        ("margins_partition_takeovers_total", partitions),
        ("margins_nats_connected", 1),
    ]:
        assert samples[(name, frozenset())] == expected, name
    recorded: Counter[int] = Counter()
    stored: dict[int, int] = {}
    for partition in range(partitions):
        events = replayed(partition_store(enforcer.store, partition))
        stored[partition] = len(events)
        recorded[partition] = sum(isinstance(event, UsageRecorded) for event in events)
    # every usage event the stores hold, counted in its own partition's series; re-sends as duplicates
    assert by_partition(samples, "margins_usage_events_total") == recorded
    assert by_partition(samples, "margins_store_events") == stored
    assert by_partition(samples, "margins_events_committed_total") == stored
    assert sum(by_partition(samples, "margins_duplicate_usage_events_total").values()) == len(messages) - sum(
        recorded.values()
    )
    assert set(by_partition(samples, "margins_partition_takeover_seconds")) == set(range(partitions))
