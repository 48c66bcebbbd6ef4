"""Posting one alert: the URL, the request the webhook sees, and the verdict and delay of each answer."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest

from budget.alerts.webhook import Backoff, Verdict, WebhookTarget, header_key, post, retry_after_s, verdict
from budget.errors import WebhookError
from tests.budget.broker import free_port
from tests.budget.webhook_receiver import receiver

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def test_a_url_gives_host_port_and_path_with_its_query() -> None:
    target = WebhookTarget.from_url("https://hooks.example.com/services/T0/B0/xyz?a=1")
    assert (target.tls, target.host, target.port, target.path) == (
        True, "hooks.example.com", 443, "/services/T0/B0/xyz?a=1",
    )  # fmt: skip
    assert WebhookTarget.from_url("http://127.0.0.1:8080").path == "/"
    assert "xyz" not in target.shown


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://host/x", "expected an http:// or https:// URL"),
        ("hooks.example.com/x", "expected an http:// or https:// URL"),
        ("http:///x", "no host"),
        ("http://host:99999/x", "bad port"),
        ("http://user:pw@host/x", "credentials in the URL"),
        ("http://host/a b", "spaces or control characters"),
    ],
)
def test_a_bad_url_is_refused_naming_it(url: str, problem: str) -> None:
    with pytest.raises(WebhookError, match=problem) as error:
        WebhookTarget.from_url(url)
    assert url in str(error.value)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Verdict.ACCEPTED), (204, Verdict.ACCEPTED),
        (408, Verdict.RETRY), (429, Verdict.RETRY), (500, Verdict.RETRY), (503, Verdict.RETRY),
        (400, Verdict.DROP), (401, Verdict.DROP), (404, Verdict.DROP), (410, Verdict.DROP),
        (301, Verdict.DROP),
    ],
)  # fmt: skip
def test_only_2xx_is_accepted_and_only_what_may_change_is_retried(status: int, expected: Verdict) -> None:
    assert verdict(status) is expected


def test_retry_after_in_seconds_or_as_a_date_capped_at_an_hour() -> None:
    assert retry_after_s("7", NOW) == 7.0
    assert retry_after_s("Wed, 02 Dec 2026 08:00:30 GMT", NOW) == 30.0
    assert retry_after_s("Wed, 02 Dec 2026 07:00:00 GMT", NOW) == 0.0
    assert retry_after_s("999999", NOW) == 3600.0
    assert retry_after_s(None, NOW) is None
    assert retry_after_s("soon", NOW) is None


def test_backoff_doubles_with_jitter_up_to_its_ceiling_and_never_undercuts_retry_after() -> None:
    backoff = Backoff(first_s=1.0, longest_s=8.0, rng=random.Random(1))
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (10, 8.0)]:
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
    assert backoff.delay(0, asked_s=30.0) == 30.0


def test_the_webhook_sees_the_json_and_the_key_as_idempotency_key() -> None:
    with receiver() as hook:
        hook.fail_next(1, 429, {"Retry-After": "3"})
        target = WebhookTarget.from_url(hook.url)
        first = asyncio.run(post(target, b'{"alert":"cap"}', "cap:ü 1:2026-12", 30.0))
        second = asyncio.run(post(target, b'{"alert":"cap"}', "cap:ü 1:2026-12", 30.0))
    assert (first.status, first.retry_after) == (429, "3")
    assert (second.status, second.retry_after) == (200, None)
    assert hook.posts[0].path == "/hooks/margins?token=t0"
    assert hook.posts[0].body == {"alert": "cap"}
    assert hook.posts[0].headers["Content-Type"] == "application/json"
    assert (
        hook.posts[0].headers["Idempotency-Key"] == header_key("cap:ü 1:2026-12") == "cap:%C3%BC%201:2026-12"
    )


def test_a_webhook_that_is_down_or_silent_raises_instead_of_answering() -> None:
    target = WebhookTarget.from_url(f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(OSError):
        asyncio.run(post(target, b"{}", "k", 30.0))
    with receiver() as hook:
        hook.hold.set()
        with pytest.raises(TimeoutError):
            asyncio.run(post(WebhookTarget.from_url(hook.url), b"{}", "k", 0.5))
        assert len(hook.posts) == 1
