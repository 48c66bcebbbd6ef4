"""The cluster calls an enforcer makes once at start (create its streams and buckets, wait for their
leaders), asked again until the cluster answers.

Why: such a call goes through the cluster's meta leader. On a busy machine, or while the cluster elects a
leader, one may time out or find no one to answer though the cluster answers it a few seconds later; an
enforcer starting then should wait, not die. Asking again is safe: creating a stream or bucket that
exists with the same config is a no-op. A cluster still silent after `limit_s` ends the start with one
line (ClusterUnavailable), never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from nats.js.errors import ServiceUnavailableError

from budget.errors import ClusterUnavailable

log = logging.getLogger("margins.enforce")
T = TypeVar("T")
# Generous: a 3-node cluster on a loaded 2-core machine has taken over 5 s to answer one stream creation.
SETUP_LIMIT_S = 90.0
# What a cluster that will answer soon replies: nothing in time, no one listening yet, JetStream not ready.
NOT_ANSWERED_YET = (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError)


async def until_answered(
    what: str, call: Callable[[], Awaitable[T]], limit_s: float = SETUP_LIMIT_S, pause_s: float = 0.5
) -> T:
    """`call()`'s answer, asked again after `pause_s` while the cluster does not answer it, for at most
    `limit_s`; then ClusterUnavailable naming `what` and the last reason."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return await call()
        except NOT_ANSWERED_YET as error:
            reason = str(error) or type(error).__name__
            if time.monotonic() >= deadline:
                raise ClusterUnavailable(what, limit_s, reason) from None
            log.warning("NATS: %s not answered yet (%s); asking again", what, reason)
            await asyncio.sleep(pause_s)
