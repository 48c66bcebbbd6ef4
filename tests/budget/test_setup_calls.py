"""Start-up calls to the cluster are asked again while it does not answer, then refused with one line."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import pytest
from nats.js.errors import ServiceUnavailableError

from budget.errors import ClusterUnavailable
from budget.jetstream.setup_calls import until_answered


class SilentFor:
    """A cluster call that fails with `errors` in turn, then answers "created"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "created"


def test_a_call_not_answered_yet_is_asked_again_until_it_is(caplog: pytest.LogCaptureFixture) -> None:
    call = SilentFor(nats.errors.TimeoutError(), nats.errors.NoRespondersError(), ServiceUnavailableError())
    with caplog.at_level(logging.WARNING, logger="margins.enforce"):
        answer = asyncio.run(until_answered("creating stream X", call, limit_s=60, pause_s=0))
    assert (answer, call.calls) == ("created", 4)
    assert sum("creating stream X not answered yet" in r.getMessage() for r in caplog.records) == 3


def test_a_cluster_silent_past_the_limit_is_one_named_error() -> None:
    call = SilentFor(*[nats.errors.TimeoutError() for _ in range(1000)])
    with pytest.raises(ClusterUnavailable) as raised:
        asyncio.run(until_answered("creating the lease bucket", call, limit_s=0.05, pause_s=0.01))
    assert 2 <= call.calls < 1000
    expected = "the NATS cluster did not answer creating the lease bucket within 0.05 s"
    assert str(raised.value).startswith(expected)


def test_a_refusal_is_not_asked_again() -> None:
    call = SilentFor(nats.errors.Error("stream name already in use with a different configuration"))
    with pytest.raises(nats.errors.Error):
        asyncio.run(until_answered("creating stream X", call, limit_s=60, pause_s=0))
    assert call.calls == 1
