"""The enforcer's Prometheus metrics, for a `/metrics` route to serve: `EnforcerMetrics(enforcer)`.

The hot path pays nothing for them. Everything the enforcer already counts (`Enforcer.counters`), the
ledger's open reservations, the store's size and the newest snapshot's age are read when Prometheus
scrapes, by a custom collector; only two histograms are observed as the enforcer runs, once per commit and
once per authorization (budget.service.instruments). The registry is the metrics' own, never
prometheus_client's global one, so two enforcers in one process (as in tests) never share a series.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from budget.service.instruments import Observed

__all__ = ["LATENCY_BUCKETS_S", "PLAIN_COUNTERS", "EnforcerMetrics", "counter_families"]

# An fdatasync here takes ~0.3 ms and an authorization's round ~1 ms; a busy disk or loop, tens of ms.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

# Counter key in Enforcer.counters -> (metric name without _total, help). Keys are documented in README.
PLAIN_COUNTERS: dict[str, tuple[str, str]] = {
    "committed": ("margins_events_committed", "Events made durable since start (rate(): events/s)"),
    "commits": ("margins_commits", "Durable group commits (one fdatasync each) since start"),
    "UsageRecorded": ("margins_usage_events", "Usage events recorded in the ledger since start"),
    "duplicate": ("margins_duplicate_usage_events", "Usage events already recorded (redelivered), ignored"),
    "late": ("margins_late_usage_events", "Usage events that arrived after their month had closed"),
    "overshoot": ("margins_overshoots", "Usage that settled a reservation after it had expired"),
    "expired": ("margins_reservations_expired", "Reservations expired unsettled"),
    "renewed": ("margins_reservations_renewed", "Reservation renewals (heartbeats) applied"),
    "renewal_ignored": ("margins_renewals_ignored", "Renewals of a settled, expired or unknown reservation"),
    "rejected_items": ("margins_rejected_items", "Items in dead-lettered messages"),
    "connections": (
        "margins_broker_connects",
        "Successful connections to the broker, the first included (reconnects: this minus one)",
    ),
    "publish_refused": ("margins_publishes_refused", "Publishes the broker acknowledged with a failure"),
    "confirmations": ("margins_confirmations", "Confirmations sent to usage senders that asked for one"),
    "status_republished": ("margins_status_republished", "Retained statuses republished after a start"),
    "http_unauthorized": ("margins_http_unauthorized", "HTTP requests refused 401: no or an unknown token"),
    "http_too_large": ("margins_http_too_large", "HTTP bodies refused 413 unread (over 1 MiB)"),
}
DEAD_LETTER_PREFIX = "dead_letter_"
ALERT_PREFIX = "alert_"


class EnforcerMetrics:
    """Prometheus metrics of one enforcer, in a registry of their own.

    Creating it makes `enforcer` hand its commit and authorization timings to the two histograms; the rest
    is read from the enforcer when `exposition()` is called (on any thread: it only reads).
    """

    def __init__(self, enforcer: Observed) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.commit_seconds = Histogram(
            "margins_commit_duration_seconds",
            "Time of one durable commit (write and fdatasync of a batch to the store's log)",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.authorize_seconds = Histogram(
            "margins_authorize_duration_seconds",
            "From an authorization's arrival to its reply handed to the broker connection (after its commit)",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_EnforcerCollector(enforcer))
        enforcer.observe_with(self)

    def committed(self, seconds: float) -> None:
        """One commit's duration (budget.service.instruments.Timings)."""
        self.commit_seconds.observe(seconds)

    def replied(self, arrivals: list[float], now: float) -> None:
        """Authorizations replied to at `now` (budget.service.instruments.Timings)."""
        observe = self.authorize_seconds.observe
        for arrived in arrivals:
            observe(now - arrived)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and the content type to serve them with."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EnforcerCollector(Collector):
    """Reads the enforcer's counters, ledger and store at scrape time."""

    def __init__(self, enforcer: Observed) -> None:
        self._enforcer = enforcer

    def collect(self) -> Iterator[Metric]:
        enforcer = self._enforcer
        # dict.copy is one C call under the GIL: a scrape from another thread never sees the Counter
        # change size halfway (Counter.copy would run Python code while the loop adds a key).
        counters: Mapping[str, int] = dict.copy(enforcer.counters)
        yield from counter_families([((), counters)], ())
        yield GaugeMetricFamily(
            "margins_reservations_open",
            "Reservations granted and neither settled nor expired",
            value=enforcer.ledger.open_reservation_count,
        )
        yield from _store_gauges(enforcer)
        yield from _replay_gauges(enforcer)


# Labels' values and the counters they label: one source per series set (a partition's, say).
CounterSources = Sequence[tuple[Sequence[str], Mapping[str, int]]]


def counter_families(
    sources: CounterSources, labels: Sequence[str], plain: Mapping[str, tuple[str, str]] = PLAIN_COUNTERS
) -> Iterator[Metric]:
    """The counters' families -- the `plain` ones, authorizations by decision, dead letters by reason and
    alerts by limit -- with a series per source, labelled `labels` (none: one enforcer's counters)."""
    for key, (name, help_text) in plain.items():
        family = CounterMetricFamily(name, help_text, labels=labels)
        for values, counters in sources:
            family.add_metric(values, counters.get(key, 0))
        yield family
    yield _decisions(sources, labels)
    dead_help = "Dead-lettered messages by reason"
    yield _by_label(sources, labels, DEAD_LETTER_PREFIX, "margins_dead_letters", dead_help, "reason")
    yield _by_label(
        sources, labels, ALERT_PREFIX, "margins_alerts", "Spend limits crossed, by limit", "limit"
    )


def _decisions(sources: CounterSources, labels: Sequence[str]) -> Metric:
    """Replies to authorizations by decision. `granted` counts allow and degrade together."""
    family = CounterMetricFamily(
        "margins_authorizations",
        "Authorizations answered, by decision (allow, degrade, deny, expired)",
        labels=[*labels, "decision"],
    )
    for values, counters in sources:
        degraded = counters.get("degraded", 0)
        family.add_metric([*values, "allow"], counters.get("granted", 0) - degraded)
        family.add_metric([*values, "degrade"], degraded)
        family.add_metric([*values, "deny"], counters.get("denied", 0))
        family.add_metric([*values, "expired"], counters.get("authorization_expired", 0))
    return family


def _by_label(
    sources: CounterSources, labels: Sequence[str], prefix: str, name: str, help_text: str, label: str
) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=[*labels, label])
    for values, counters in sources:
        for key in sorted(counters):
            if key.startswith(prefix):
                family.add_metric([*values, key.removeprefix(prefix)], counters[key])
    return family


def _store_gauges(enforcer: Observed) -> Iterator[Metric]:
    store = enforcer.store
    if store is None:  # not started, or stopped: nothing to say about a store
        return
    size = GaugeMetricFamily(
        "margins_store_size_bytes", "The event store's bytes on disk: segments and log", labels=["part"]
    )
    for part, size_bytes in store.size_bytes().items():
        size.add_metric([part], size_bytes)
    yield size
    yield GaugeMetricFamily(
        "margins_store_events", "Events in the store (its last seq plus one)", value=store.last_seq + 1
    )
    written_at = store.newest_snapshot_written_at()
    if written_at is not None:
        yield GaugeMetricFamily(
            "margins_snapshot_age_seconds",
            "Seconds since the newest ledger snapshot was written",
            value=max(0.0, time.time() - written_at),
        )


def _replay_gauges(enforcer: Observed) -> Iterator[Metric]:
    stats = enforcer.replay_stats
    if stats is None:
        return
    yield GaugeMetricFamily(
        "margins_replay_duration_seconds",
        "How long the start-up restore took (snapshot loading and replay)",
        value=stats.seconds,
    )
    yield GaugeMetricFamily(
        "margins_replay_events", "Events replayed at start, after the snapshot restored", value=stats.events
    )
