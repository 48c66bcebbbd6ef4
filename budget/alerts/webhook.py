"""Posting one alert to the webhook, and what to do with the answer.

A small HTTP/1.1 client over asyncio streams (http and https): one POST per connection, `Connection:
close`, the answer's status and Retry-After read and the rest ignored. Standard library only, and
cancellable at any point, so a stop never waits for a webhook that hangs.

The verdict of one attempt is pure: 2xx accepted; 408, 429, 5xx, a connection error or a timeout retried
with exponential backoff and jitter (at least Retry-After when the webhook sent one); anything else -- a
4xx that will not change by asking again, a redirect -- dropped.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from urllib.parse import quote, urlsplit

from budget.errors import WebhookError

MAX_RETRY_AFTER_S = 3600.0  # a Retry-After beyond an hour is taken as an hour
_MAX_HEADER_LINES = 100


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """Where alerts are posted: scheme, host, port and the path with its query."""

    url: str
    tls: bool
    host: str
    port: int
    path: str

    @classmethod
    def from_url(cls, url: str) -> WebhookTarget:
        """Parse `http(s)://HOST[:PORT]/PATH`; raises WebhookError saying what is wrong."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise WebhookError(url, "expected an http:// or https:// URL")
        if not parts.hostname:
            raise WebhookError(url, "no host")
        if parts.username is not None:
            raise WebhookError(url, "credentials in the URL are not supported; put a token in the path")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as error:
            raise WebhookError(url, f"bad port: {error}") from error
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c.isspace() or ord(c) < 0x20 for c in path):
            raise WebhookError(url, "the path holds spaces or control characters")
        return cls(url, parts.scheme == "https", parts.hostname, port, path)

    @property
    def shown(self) -> str:
        """The URL without its path and query, which often hold a secret token (Slack's do)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/..."


@dataclass(frozen=True, slots=True)
class Answer:
    """What the webhook answered: the status code and its Retry-After header, if any."""

    status: int
    retry_after: str | None = None


async def post(target: WebhookTarget, body: bytes, key: str, timeout_s: float) -> Answer:
    """POST `body` with `key` as its Idempotency-Key; raises OSError or TimeoutError when no answer came
    (refused, reset, unreadable, or nothing within `timeout_s` for the whole exchange)."""
    head = (
        f"POST {target.path} HTTP/1.1\r\n"
        f"Host: {target.host}:{target.port}\r\n"
        "User-Agent: margins-alerts\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Idempotency-Key: {header_key(key)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    tls = ssl.create_default_context() if target.tls else None
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(target.host, target.port, ssl=tls)
        try:
            writer.write(head + body)
            await writer.drain()
            return await _read_answer(reader)
        finally:
            writer.close()


def header_key(key: str) -> str:
    """An alert key as a header value: ASCII, non-ASCII and separators percent-encoded."""
    return quote(key, safe=":@!$&'()*+,;=-._~/")


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    status_line = (await reader.readline()).decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {status_line[:80]!r}")
    retry_after = None
    for _ in range(_MAX_HEADER_LINES):
        line = (await reader.readline()).decode("latin-1").strip()
        if not line:
            break
        name, _, value = line.partition(":")
        if name.strip().lower() == "retry-after":
            retry_after = value.strip()
    return Answer(int(parts[1]), retry_after)


class Verdict(Enum):
    """What to do with an alert after one attempt."""

    ACCEPTED = "accepted"
    RETRY = "retry"
    DROP = "drop"


def verdict(status: int) -> Verdict:
    """2xx accepted; 408, 429 and 5xx retried; the rest (other 4xx, redirects) dropped."""
    if 200 <= status < 300:
        return Verdict.ACCEPTED
    if status in (408, 429) or 500 <= status < 600:
        return Verdict.RETRY
    return Verdict.DROP


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), capped at an hour; None
    when absent or unreadable."""
    if value is None:
        return None
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max((when - now).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with jitter: the n-th retry waits a random time in [d/2, d], d = first * 2**n
    capped at `longest`; never less than what the webhook asked for."""

    first_s: float = 0.5
    longest_s: float = 60.0
    rng: random.Random | None = None

    def delay(self, attempt: int, asked_s: float | None = None) -> float:
        """Seconds before retry number `attempt` (0 for the first retry)."""
        ceiling = min(self.first_s * 2.0 ** min(attempt, 30), self.longest_s)
        jittered = ceiling * (0.5 + 0.5 * (self.rng or random).random())
        return max(jittered, asked_s or 0.0)
