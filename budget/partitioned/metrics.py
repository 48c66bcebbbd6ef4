"""A partitioned enforcer's Prometheus metrics: `ClusterMetrics(enforcer)`, for its `/metrics` route.

Read at scrape time, like the single-broker enforcer's (budget.service.metrics), in a registry of their
own. The process's own series say how many partitions it holds against its share, whether it is connected
to the cluster, and how often it took a partition over, gave one up or lost a lease. The ledger's counters
(events committed, usage recorded, authorizations by decision, dead letters by reason, ...) are one series
per partition held, labelled `partition`: a partition moved to another enforcer leaves this process's
exposition and goes on in that one's, from zero (a counter reset, which rate() and increase() expect), so
`sum by (partition)` over every enforcer is the partition's figure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from budget.service.metrics import PLAIN_COUNTERS, counter_families

__all__ = ["PROCESS_COUNTERS", "ClusterMetrics", "Partitioned"]

# The single-broker counters a partition keeps (a partition has no broker connection and no HTTP door).
PARTITION_COUNTERS = {
    key: PLAIN_COUNTERS[key]
    for key in (
        "committed", "commits", "UsageRecorded", "duplicate", "late", "overshoot", "expired", "renewed",
        "renewal_ignored", "rejected_items",
    )
}  # fmt: skip
# Counter key in PartitionedEnforcer.counters -> (metric name without _total, help).
PROCESS_COUNTERS: dict[str, tuple[str, str]] = {
    "taken": ("margins_partition_takeovers", "Partitions taken over (restored and decided here) since start"),
    "given_up": ("margins_partitions_given_up", "Partitions given up cleanly (to balance, or at a stop)"),
    "lease_lost": ("margins_partition_leases_lost", "Partitions whose lease was lost while decided here"),
    "nats_disconnects": ("margins_nats_disconnects", "Connections to the cluster lost (then reconnected)"),
}


class HeldPartition(Protocol):
    """What the metrics read of one partition held (budget.partitioned.owner.PartitionOwner is one)."""

    @property
    def counters(self) -> Mapping[str, int]: ...

    @property
    def open_reservations(self) -> int: ...

    @property
    def stored_events(self) -> int | None: ...

    @property
    def taken_in_s(self) -> float | None: ...


class Partitioned(Protocol):
    """What the metrics read of a partitioned enforcer (budget.partitioned.enforcer is one)."""

    @property
    def counters(self) -> Mapping[str, int]: ...

    @property
    def partitions(self) -> int: ...

    @property
    def share(self) -> int: ...

    @property
    def connected(self) -> bool: ...

    @property
    def owned(self) -> Mapping[int, HeldPartition]:
        """The partitions decided here now, by number."""


class ClusterMetrics:
    """Prometheus metrics of one partitioned enforcer, in a registry of their own."""

    def __init__(self, enforcer: Partitioned) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_ClusterCollector(enforcer))

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and the content type to serve them with."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ClusterCollector(Collector):
    def __init__(self, enforcer: Partitioned) -> None:
        self._enforcer = enforcer

    def collect(self) -> Iterator[Metric]:
        enforcer = self._enforcer
        # Scraped on the enforcer's own event loop (its HTTP server is a task there): nothing changes
        # while this runs, so nothing is copied.
        held = enforcer.owned
        yield GaugeMetricFamily(
            "margins_partitions", "The cluster's number of partitions", enforcer.partitions
        )
        yield GaugeMetricFamily("margins_partitions_held", "Partitions decided by this enforcer", len(held))
        yield GaugeMetricFamily(
            "margins_partition_share",
            "Partitions this enforcer takes while free (N over those alive)",
            enforcer.share,
        )
        yield GaugeMetricFamily(
            "margins_nats_connected", "1 while connected to the cluster, else 0", int(enforcer.connected)
        )
        for key, (name, help_text) in PROCESS_COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=enforcer.counters.get(key, 0))
        sources = [((str(p),), owner.counters) for p, owner in sorted(held.items())]
        yield from counter_families(sources, ("partition",), PARTITION_COUNTERS)
        yield from _partition_gauges(held)


def _partition_gauges(held: Mapping[int, HeldPartition]) -> Iterator[Metric]:
    """Per partition held: open reservations, events in its store, how long taking it over took."""
    reservations = GaugeMetricFamily(
        "margins_reservations_open",
        "Reservations granted and neither settled nor expired",
        labels=["partition"],
    )
    events = GaugeMetricFamily(
        "margins_store_events",
        "Events in the partition's store (its last seq plus one)",
        labels=["partition"],
    )
    taken = GaugeMetricFamily(
        "margins_partition_takeover_seconds",
        "How long taking the partition over took here (fence, restore, journal, attach)",
        labels=["partition"],
    )
    for partition, owner in sorted(held.items()):
        label = [str(partition)]
        reservations.add_metric(label, owner.open_reservations)
        if owner.stored_events is not None:
            events.add_metric(label, owner.stored_events)
        if owner.taken_in_s is not None:
            taken.add_metric(label, owner.taken_in_s)
    yield from (reservations, events, taken)
