"""For the metrics' tests: traffic of the kinds the metrics count, `EnforcerMetrics.exposition()` parsed,
and the exposition served over plain HTTP on the enforcer's loop (a stand-in for the enforcer's own HTTP
server) so that a real Prometheus can scrape it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from prometheus_client.parser import text_string_to_metric_families

from budget.service.enforcer import Enforcer
from budget.service.metrics import EnforcerMetrics
from tests.budget.enforcer_helpers import Authorizer, wait_until
from tests.budget.mqtt_helpers import mqtt, publish_all, usage_body


def samples(metrics: EnforcerMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition by (sample name, labels)."""
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """One sample's value; a KeyError names what was missing."""
    key = (name, frozenset(labels.items()))
    if key not in found:
        raise KeyError(f"no sample {name}{labels or ''} in the exposition")
    return found[key]


USAGE_MESSAGES = 40
ARRAY = 3  # events in the one array message
BAD = [b"{not json", b"\xff\xfe\x00", json.dumps(usage_body("odd", model="mystery-9")).encode()]


async def send_traffic(enforcer: Enforcer, port: int) -> None:
    """Usage (single events and one array), an allowed and a denied authorization, three dead letters."""
    async with mqtt(port) as pub, mqtt(port) as replies:
        bodies = [json.dumps(usage_body(f"e{i}")).encode() for i in range(USAGE_MESSAGES)]
        bodies.append(json.dumps([usage_body(f"a{i}") for i in range(ARRAY)]).encode())
        await publish_all(pub, "margins/usage/alice", bodies)
        for payload in BAD:
            await pub.publish("margins/usage/alice", payload, qos=1)
        authorizer = await Authorizer(replies).start()
        assert (await authorizer.ask("small"))["decision"] == "allow"
        # 5M output tokens of gpt-4o-mini is $3, past the $1 cap
        assert (await authorizer.ask("huge", max_output_tokens=5_000_000))["decision"] == "deny"
        authorizer.stop()

    def dead() -> int:
        return sum(n for key, n in enforcer.counters.items() if key.startswith("dead_letter_"))

    await wait_until(
        lambda: enforcer.counters["UsageRecorded"] == USAGE_MESSAGES + ARRAY and dead() == len(BAD),
        "every usage event recorded and every bad message dead-lettered",
    )
    store = enforcer.store
    assert store is not None
    await wait_until(lambda: enforcer.counters["committed"] == store.last_seq + 1, "everything committed")


@contextlib.asynccontextmanager
async def metrics_http(metrics: EnforcerMetrics) -> AsyncIterator[str]:
    """Serve the exposition at http://127.0.0.1:<port>/metrics (any path answers the same); yields the URL."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            body, content_type = metrics.exposition()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/metrics"
