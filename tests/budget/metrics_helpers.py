"""Reading `EnforcerMetrics.exposition()` in tests, and serving it over plain HTTP on the enforcer's loop
(the stand-in for the enforcer's own HTTP server) so a real Prometheus can scrape it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client.parser import text_string_to_metric_families

from budget.service.metrics import EnforcerMetrics


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
