"""Posting one alert to the webhook, and what to do with the answer.

One POST per attempt with httpx2 (already in the core install, under the OpenAI and Anthropic SDKs and
genai-prices): the answer's status and Retry-After are read, redirects are not followed, and the whole
exchange is bounded by one timeout and cancellable, so a stop never waits for a webhook that hangs.

The verdict of one attempt is pure: 2xx accepted; 408, 429, 5xx, a connection error or a timeout retried
with exponential backoff and jitter (at least Retry-After when the webhook sent one); anything else -- a
4xx that will not change by asking again, a redirect -- dropped.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from urllib.parse import quote, urlsplit

from budget.errors import WebhookError

MAX_RETRY_AFTER_S = 3600.0  # a Retry-After beyond an hour is taken as an hour


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
    import httpx2  # here, so `margins alerts --help` does not pay for it

    headers = {
        "User-Agent": "margins-alerts",
        "Content-Type": "application/json",
        "Idempotency-Key": header_key(key),
    }
    async with asyncio.timeout(timeout_s), httpx2.AsyncClient(timeout=None, follow_redirects=False) as client:
        try:
            response = await client.post(target.url, content=body, headers=headers)
        except httpx2.TimeoutException as error:
            raise TimeoutError(str(error)) from error
        except httpx2.HTTPError as error:  # refused, reset, not HTTP: no answer to judge
            raise ConnectionError(f"{type(error).__name__}: {error}") from error
    return Answer(response.status_code, response.headers.get("retry-after"))


def header_key(key: str) -> str:
    """An alert key as a header value: ASCII, non-ASCII and separators percent-encoded."""
    return quote(key, safe=":@!$&'()*+,;=-._~/")


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
