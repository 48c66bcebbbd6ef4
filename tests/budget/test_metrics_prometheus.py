"""A real Prometheus (Debian's `prometheus`) scrapes an enforcer's metrics -- in process, and at `/metrics`
on a real `margins enforce --http` -- and the events it says were committed are the events in the store."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from benchmarks.prometheus_scrape import Prometheus, PrometheusError, prometheus_binary, scrape_config
from budget.domain.events import UsageRecorded
from budget.service.metrics import EnforcerMetrics
from tests.budget.broker import Broker
from tests.budget.enforcer_helpers import PATIENCE_S, make_enforcer, stored_events
from tests.budget.http_door_helpers import client, door_process
from tests.budget.metrics_helpers import metrics_http, send_traffic
from tests.budget.mqtt_helpers import usage_body
from tests.budget.store_helpers import replayed


def _skip_without_prometheus() -> None:
    try:
        prometheus_binary()
    except PrometheusError as missing:  # as the broker's tests skip without mosquitto
        pytest.skip(str(missing))


def test_prometheus_reads_the_events_the_store_holds(mosquitto: Broker, tmp_path: Path) -> None:
    _skip_without_prometheus()

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


def test_prometheus_scrapes_margins_enforce_http_and_its_figures_match_the_store(
    mosquitto: Broker, tmp_path: Path
) -> None:
    _skip_without_prometheus()
    process, url = door_process(mosquitto, tmp_path)
    process.start()
    now = datetime.now(UTC).isoformat()
    with client(url) as http:
        for i in range(25):
            assert http.post("/v1/usage", json=usage_body(f"m{i}", user="mia", ts=now)).status_code == 200
        refused = http.post("/v1/usage", json=usage_body("x", ts=now), headers={"Authorization": "Bearer no"})
        assert refused.status_code == 401
        page = http.get("/metrics", headers={"Authorization": ""})  # scrapers carry no token
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    with Prometheus(f"{url}/metrics") as prometheus:
        committed = prometheus.wait_for_value("margins_events_committed_total", PATIENCE_S)
        in_store = prometheus.wait_for_value("margins_store_events", PATIENCE_S)
        usage = prometheus.wait_for_value("margins_usage_events_total", PATIENCE_S)
        unauthorized = prometheus.wait_for_value("margins_http_unauthorized_total", PATIENCE_S)
    assert process.terminate() == 0
    events = replayed(process.store)
    assert committed == in_store == len(events)
    assert usage == sum(isinstance(e, UsageRecorded) for e in events) == 25
    assert unauthorized == 1


def test_scrape_config_points_at_the_url() -> None:
    config = json.loads(scrape_config("http://10.0.0.5:9464/custom/metrics"))  # JSON is YAML
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["10.0.0.5:9464"]}]
    assert (job["scheme"], job["metrics_path"]) == ("http", "/custom/metrics")
    assert config["global"]["scrape_interval"] == "1s"


def test_a_url_without_a_host_is_refused_with_a_message() -> None:
    with pytest.raises(PrometheusError, match="not an http"):
        scrape_config("localhost:9464/metrics")
