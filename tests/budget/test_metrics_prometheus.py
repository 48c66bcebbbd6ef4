"""A real Prometheus (Debian's `prometheus`) scrapes an in-process enforcer's metrics, and the events it
says were committed are the events in the store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from benchmarks.prometheus_scrape import Prometheus, PrometheusError, prometheus_binary, scrape_config
from budget.service.metrics import EnforcerMetrics
from tests.budget.broker import Broker
from tests.budget.enforcer_helpers import PATIENCE_S, make_enforcer, stored_events
from tests.budget.metrics_helpers import metrics_http, send_traffic


def test_prometheus_reads_the_events_the_store_holds(mosquitto: Broker, tmp_path: Path) -> None:
    try:
        prometheus_binary()
    except PrometheusError as missing:  # as the broker's tests skip without mosquitto
        pytest.skip(str(missing))

    async def scenario() -> tuple[float, int]:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            metrics = EnforcerMetrics(enforcer)
            await enforcer.wait_subscribed(PATIENCE_S)
            await send_traffic(enforcer, mosquitto.port)
            assert enforcer.store is not None
            in_store = enforcer.store.last_seq + 1
            async with metrics_http(metrics) as url:

                def scrape() -> float:
                    with Prometheus(url) as prometheus:
                        return prometheus.wait_for_value("margins_events_committed_total", PATIENCE_S)

                # Prometheus' scrapes are answered on this loop while it waits in a thread
                return await asyncio.to_thread(scrape), in_store

    scraped, in_store = asyncio.run(scenario())
    assert scraped == in_store == len(stored_events(tmp_path))


def test_scrape_config_points_at_the_url() -> None:
    config = json.loads(scrape_config("http://10.0.0.5:9464/custom/metrics"))  # JSON is YAML
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["10.0.0.5:9464"]}]
    assert (job["scheme"], job["metrics_path"]) == ("http", "/custom/metrics")
    assert config["global"]["scrape_interval"] == "1s"


def test_a_url_without_a_host_is_refused_with_a_message() -> None:
    with pytest.raises(PrometheusError, match="not an http"):
        scrape_config("localhost:9464/metrics")
