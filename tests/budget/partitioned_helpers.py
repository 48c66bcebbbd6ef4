"""`margins enforce --nats` as real processes on the three-node test cluster, and what an application
does against it: publish usage that the cluster must store (a JetStream acknowledgement, retried with
its message id until one comes), ask for an authorization and wait for its reply, read who holds which
partition. Every wait is bounded generously and returns as soon as its condition holds."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoStreamResponseError

from budget.domain.catalog import default_catalog
from budget.domain.events import Event
from budget.jetstream.kv_lease import open_lease_bucket
from budget.jetstream.lease import decode_owner
from budget.jetstream.partitions import lease_key, partition_of
from budget.partitioned.enforcer import READY_LOG
from budget.partitioned.owner import partition_store
from tests.budget.broker import REPO
from tests.budget.enforcer_process import stopped_or_stacks
from tests.budget.mqtt_helpers import usage_body
from tests.budget.nats_cluster import NatsCluster
from tests.budget.store_helpers import replayed

LIMIT_S = 90.0
TRANSIENT = (nats.errors.TimeoutError, NoStreamResponseError, nats.errors.NoRespondersError)


@dataclass
class PartitionedProcess:
    """One `margins enforce --nats` process; its log goes to a file so a full pipe never blocks it."""

    cluster: NatsCluster
    store: Path
    config: Path
    owner: str
    lease_ttl_s: float = 2.0
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.store.parent / f"{self.owner}.log"

    def start(self, timeout: float = LIMIT_S) -> None:
        """Start it and wait for its ready line (connected, contending)."""
        args = [
            str(Path(sys.executable).parent / "margins"), "enforce",
            "--nats", ",".join(self.cluster.urls), "--partitions", str(self.cluster.partitions),
            "--store", str(self.store), "--config", str(self.config), "--owner", self.owner,
            "--lease-ttl", str(self.lease_ttl_s), *self.extra,
        ]  # fmt: skip
        self.log.parent.mkdir(parents=True, exist_ok=True)
        starts = self.log.read_text(errors="replace").count(READY_LOG) if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, cwd=REPO)
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count(READY_LOG) <= starts:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"margins enforce --nats exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"margins enforce --nats not ready in {timeout}s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def terminate(self, timeout: float = LIMIT_S) -> int:
        """SIGTERM it and wait for its exit code (one that does not stop fails with its threads' stacks)."""
        assert self.proc is not None
        code = stopped_or_stacks(self.proc, self.log, timeout)
        self.proc = None
        return code


async def _connection_error(_error: Exception) -> None:
    """A killed node refuses every reconnect to it: expected here, so not printed."""


@asynccontextmanager
async def connected(cluster: NatsCluster) -> AsyncIterator[tuple[NatsClient, JetStreamContext]]:
    """An application's connection to every node, reconnecting for ever."""
    nc = await nats.connect(
        cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=_connection_error
    )
    try:
        yield nc, nc.jetstream(timeout=5)
    finally:
        await nc.close()


async def publish_stored(js: JetStreamContext, subject: str, body: bytes, msg_id: str) -> None:
    """Publish until the cluster says it stored the message (retries carry the same id: stored once)."""
    async with asyncio.timeout(LIMIT_S):
        while True:
            try:
                await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})
                return
            except TRANSIENT:
                await asyncio.sleep(0.1)


async def publish_all(
    js: JetStreamContext, messages: Sequence[tuple[str, bytes, str]], window: int = 32, pace_s: float = 0.0
) -> None:
    """Every (subject, body, id) stored, `window` at a time."""
    for start in range(0, len(messages), window):
        chunk = messages[start : start + window]
        await asyncio.gather(*(publish_stored(js, s, b, i) for s, b, i in chunk))
        if pace_s:
            await asyncio.sleep(pace_s)


async def authorize(
    nc: NatsClient,
    js: JetStreamContext,
    user: str,
    request_id: str,
    tokens: tuple[int, int],
    timeout: float,
    attempt: int = 0,
) -> dict[str, Any]:
    """Ask for an authorization as an application does over NATS (its reply address in the payload) and
    return the enforcer's reply; TimeoutError if none comes within `timeout`. Each `attempt` is a new
    message (the stream would drop a same-id re-send); the request id makes the enforcer decide once."""
    reply_topic = f"margins/replies/{request_id}"
    subscription = await nc.subscribe(reply_topic.replace("/", "."), max_msgs=1)
    body = {
        "request_id": request_id,
        "user_id": user,
        "model": "gpt-4o-mini",
        "max_input_tokens": tokens[0],
        "max_output_tokens": tokens[1],
        "reply_to": reply_topic,
    }
    try:
        await publish_stored(
            js, f"margins.authorize.{user}", json.dumps(body).encode(), f"{request_id}#{attempt}"
        )
        message = await subscription.next_msg(timeout=timeout)
        reply: dict[str, Any] = json.loads(message.data)
        return reply
    finally:
        await subscription.unsubscribe()


async def lease_owners(js: JetStreamContext, partitions: int) -> dict[int, str | None]:
    """Who holds each partition's lease (None: nobody)."""
    kv = await open_lease_bucket(js)
    owners: dict[int, str | None] = {}
    for partition in range(partitions):
        try:
            owners[partition] = decode_owner((await kv.get(lease_key(partition))).value)
        except KeyNotFoundError:
            owners[partition] = None
    return owners


async def wait_for_owners(
    js: JetStreamContext, partitions: int, holds: Callable[[dict[int, str | None]], bool]
) -> dict[int, str | None]:
    """Until the leases' owners satisfy `holds` (reads retried through a node loss)."""
    async with asyncio.timeout(LIMIT_S):
        while True:
            try:
                owners = await lease_owners(js, partitions)
                if holds(owners):
                    return owners
            except (*TRANSIENT, nats.errors.Error):
                pass
            await asyncio.sleep(0.1)


def stored_events(root: Path, partitions: int) -> list[Event]:
    """Every event in every partition's store under `root` (a partition never taken has none)."""
    events: list[Event] = []
    for partition in range(partitions):
        path = partition_store(root, partition)
        if path.exists():
            events += replayed(path)
    return events


async def wait_until_decided(js: JetStreamContext, partitions: int) -> None:
    """Until every partition's input stream is empty: each message taken, decided, committed and
    acknowledged (a work queue deletes a message once its consumer acknowledges it)."""
    from budget.jetstream.partitions import stream_name

    async with asyncio.timeout(LIMIT_S):
        while True:
            try:
                infos = [await js.stream_info(stream_name(p)) for p in range(partitions)]
                if all(info.state.messages == 0 for info in infos):
                    return
            except (*TRANSIENT, nats.errors.Error):
                pass
            await asyncio.sleep(0.1)


async def authorize_until_answered(
    nc: NatsClient, js: JetStreamContext, user: str, request_id: str, tokens: tuple[int, int]
) -> dict[str, Any]:
    """An application's authorization through a failover: asked again (same request id, so decided
    once) whenever no reply comes within a few seconds."""
    async with asyncio.timeout(LIMIT_S):
        for attempt in itertools.count():
            try:
                return await authorize(nc, js, user, request_id, tokens, 3.0, attempt)
            except (*TRANSIENT, nats.errors.Error):
                await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


def user_in(partition: int, partitions: int, prefix: str = "a") -> str:
    """A user id (`prefix` + a number) the cluster puts in `partition`."""
    return next(
        u for u in (f"{prefix}{i}" for i in range(10_000)) if partition_of(u, partitions) == partition
    )


def wait_until_held_by(cluster: NatsCluster, *owners: str) -> None:
    """Until every partition's lease is held, by exactly `owners` between them."""

    async def wait() -> None:
        async with connected(cluster) as (_nc, js):
            await wait_for_owners(js, cluster.partitions, lambda held: set(held.values()) == set(owners))

    asyncio.run(wait())


def publish_and_decide(cluster: NatsCluster, messages: Sequence[tuple[str, bytes, str]]) -> None:
    """Publish `messages` and wait until every one is decided."""

    async def run() -> None:
        async with connected(cluster) as (_nc, js):
            await publish_all(js, messages)
            await wait_until_decided(js, cluster.partitions)

    asyncio.run(run())


MODELS = ("gpt-4o-mini", "gpt-4.1-nano", "gpt-5-mini")
USERS = [f"u{index}" for index in range(12)]


def usage_messages(count: int, seed: int) -> tuple[list[tuple[str, bytes, str]], Counter[str]]:
    """`count` usage reports over USERS (some sent twice, as applications re-send), and what each user
    must have spent once every one is counted exactly once."""
    rng = random.Random(seed)
    prices = default_catalog()
    now = datetime.now(UTC).isoformat()
    messages: list[tuple[str, bytes, str]] = []
    expected: Counter[str] = Counter()
    for index in range(count):
        user, model = USERS[index % len(USERS)], MODELS[index % len(MODELS)]
        tokens = (rng.randint(10, 5000), rng.randint(1, 2000))
        body = usage_body(
            f"k{seed}-{index}",
            user=user,
            model=model,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            ts=now,
        )
        expected[user] += prices.cost_nanos(model, tokens[0], tokens[1])
        # The message id is the publish's, not the event's: a re-send after the dedupe window is a new
        # message with the same event, which the ledger must count once.
        messages.append((f"margins.usage.{user}", json.dumps(body).encode(), f"m{seed}-{index}"))
        if index % 10 == 0:
            subject, payload, _ = messages[rng.randrange(len(messages))]
            messages.append((subject, payload, f"again{seed}-{index}"))
    return messages, expected
