"""The partitioned enforcer: one process among any number on a NATS JetStream cluster, each deciding the
partitions whose lease it holds (budget.partitioned.owner) and watching the others' leases to take over a
partition whose owner stopped renewing.

Every partition has a contender loop here: it reads the partition's lease every `read_every_s`; when its
holder let a whole TTL pass without renewing, it takes it over at once, and when the lease is free it
takes it if this process holds fewer than its fair share (the key-value store decides between two
contenders); then it runs a PartitionOwner until the lease is lost, the process stops, or the partition
is given up. The share is N over the enforcers alive (each announces itself: budget.jetstream.members), so
a second enforcer started beside a first that holds everything gets half: the first gives up the
partitions beyond its share (cleanly: commit, snapshot, release) and the second takes them.
`max_partitions` caps how many one process holds, whatever the share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from budget.domain.config import EnforcerConfig
from budget.domain.prices import PriceCatalog
from budget.errors import JournalError, LeaseLost, StoreError
from budget.jetstream.kv_lease import KvLease, open_lease_bucket
from budget.jetstream.lease import LeaseTerms, beyond_share, fair_share
from budget.jetstream.members import announce, forget, live_members, open_members_bucket
from budget.jetstream.partitions import lease_key
from budget.jetstream.setup_calls import until_answered
from budget.jetstream.streams import ensure_partition_streams
from budget.partitioned.owner import PartitionOwner
from budget.service.defaults import SNAPSHOT_EVERY_EVENTS
from budget.service.door import HttpSettings
from budget.service.throttle import LogThrottle

if TYPE_CHECKING:
    from budget.service.http_server import HttpServer

log = logging.getLogger("margins.enforce")

READY_LOG = "partitioned enforcer ready"
JS_TIMEOUT_S = 5.0
# An enforcer not heard from for this many lease TTLs is no longer counted when sharing partitions out.
MEMBER_EXPIRY_TTLS = 3


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Where the cluster is and how this process takes part: `owner` names it in the leases (unique per
    process), `partitions` is the cluster's N (the template's), `replicas` its streams' copies."""

    servers: tuple[str, ...]
    partitions: int
    owner: str
    terms: LeaseTerms = field(default_factory=LeaseTerms)
    read_every_s: float = 0.5
    max_partitions: int | None = None
    replicas: int = 3


class PartitionedEnforcer:
    """The partitioned enforcer as an `async with` component: entering connects to the cluster (creating
    the streams and the lease bucket if missing) and starts a contender loop per partition; `wait()`
    returns when `request_stop()` is called; leaving gives up every partition held, cleanly. With `http`,
    it serves /metrics, /healthz and /readyz there (budget.partitioned.door) from before it connects."""

    def __init__(
        self,
        cluster: ClusterSettings,
        store_root: str | Path,
        config: EnforcerConfig,
        *,
        prices: PriceCatalog | None = None,
        snapshot_every_events: int = SNAPSHOT_EVERY_EVENTS,
        http: HttpSettings | None = None,
    ) -> None:
        self.cluster = cluster
        self.store_root = Path(store_root)
        self._config = config
        self._prices = prices if prices is not None else config.catalog()
        self._snapshot_every = snapshot_every_events
        self.owned: dict[int, PartitionOwner] = {}
        self.share = cluster.partitions  # until the members are counted
        self._give_up: dict[int, asyncio.Event] = {}  # set: give that partition up to balance
        self._stop = asyncio.Event()
        self._nc: NatsClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._throttle = LogThrottle(log)
        self.counters: Counter[str] = Counter()  # takeovers, give-ups, leases lost, disconnects
        self._set_up_done = False
        self._http_settings = http
        self._http: HttpServer | None = None

    @property
    def partitions(self) -> int:
        """The cluster's number of partitions."""
        return self.cluster.partitions

    @property
    def connected(self) -> bool:
        """Connected to a node of the cluster now."""
        return self._nc is not None and self._nc.is_connected

    def readiness(self) -> str | None:
        """None when connected to the cluster and contending for partitions, else why not."""
        if not self._set_up_done:
            return "connecting to the cluster"
        if self._stop.is_set():
            return "stopping"
        return None if self.connected else "disconnected from the cluster; reconnecting"

    async def __aenter__(self) -> PartitionedEnforcer:
        if self._http_settings is not None:  # first: /healthz answers while the cluster is reached
            from budget.partitioned.door import open_door

            self._http = await open_door(self, self._http_settings)
        try:
            return await self._join()
        except BaseException:
            if self._http is not None:
                await self._http.stop()
            raise

    async def _join(self) -> PartitionedEnforcer:
        """Connect, set up and start contending."""
        c = self.cluster
        self._nc = await nats.connect(
            servers=list(c.servers),
            name=c.owner,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=self._on_nats_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        js = self._nc.jetstream(timeout=JS_TIMEOUT_S)
        try:
            kv, members = await self._set_up(js)
        except BaseException:
            with contextlib.suppress(nats.errors.Error):
                await self._nc.close()
            raise
        self._tasks = [
            asyncio.create_task(
                self._contend(js, kv, members, partition), name=f"margins-contend-{partition}"
            )
            for partition in range(c.partitions)
        ]
        self._tasks.append(asyncio.create_task(self._balance(members), name="margins-balance"))
        self._set_up_done = True
        servers = ", ".join(c.servers)
        log.info("%s: %s contends for %d partitions on %s", READY_LOG, c.owner, c.partitions, servers)
        return self

    async def _set_up(self, js: JetStreamContext) -> tuple[KeyValue, KeyValue]:
        """The partitions' streams and the lease and members buckets, created where missing, and this
        process announced (each asked again while the cluster does not answer: jetstream/setup_calls.py)."""
        c = self.cluster
        await ensure_partition_streams(js, c.partitions, c.replicas)
        kv = await until_answered("creating the lease bucket", partial(open_lease_bucket, js, c.replicas))
        members = await until_answered(
            "creating the members bucket",
            partial(open_members_bucket, js, MEMBER_EXPIRY_TTLS * c.terms.ttl_s, c.replicas),
        )
        await until_answered("announcing this enforcer", partial(self._count_members, members))
        return kv, members

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._nc is not None:  # every partition committed and answered what it took: nothing to drain
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._nc.flush(timeout=2)  # the last acknowledgements, replies and statuses
            with contextlib.suppress(nats.errors.Error):
                await self._nc.close()
        if self._http is not None:
            await self._http.stop()
        log.info("partitioned enforcer %s stopped", self.cluster.owner)

    async def _on_nats_error(self, error: Exception) -> None:
        """One line per kind of connection error (a node lost refuses every reconnect to it), no traceback."""
        self._throttle.warning(type(error).__name__, "NATS: %s", error or type(error).__name__)

    async def _on_disconnected(self) -> None:
        if self._stop.is_set():
            return  # our own close at a clean stop
        self.counters["nats_disconnects"] += 1
        log.warning("NATS: disconnected; reconnecting to any of %s", ", ".join(self.cluster.servers))

    async def _on_reconnected(self) -> None:
        url = self._nc.connected_url if self._nc is not None else None
        log.info("NATS: reconnected to %s", url.netloc if url is not None else "the cluster")

    def request_stop(self) -> None:
        """Ask `wait()` to return (safe to call from a signal handler on the loop)."""
        self._stop.set()

    async def wait(self) -> None:
        """Until a stop is requested; re-raises the error of a contender loop that failed."""
        stop = asyncio.create_task(self._stop.wait(), name="margins-stop")
        watched = [stop, *self._tasks, *([self._http.task] if self._http is not None else [])]
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        for task in done:
            if task is not stop and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _count_members(self, members: KeyValue) -> None:
        """Announce this process, count the live ones, and set this process's share from them."""
        c = self.cluster
        await announce(members, c.owner)
        share = fair_share(c.partitions, await live_members(members))
        self.share = share if c.max_partitions is None else min(share, c.max_partitions)

    async def _balance(self, members: KeyValue) -> None:
        """Keep announcing this process; give up the partitions beyond its share when more enforcers live."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.cluster.terms.renew_every_s)
            try:
                await self._count_members(members)
            except (nats.errors.Error, TimeoutError) as error:  # the bucket electing a leader: keep the share
                self._throttle.warning("members", "NATS: counting the live enforcers failed (%r)", error)
                continue
            for partition in beyond_share(self.owned, self.share):
                if not self._give_up[partition].is_set():
                    log.info("partition %d: giving it up to balance (a share is %d)", partition, self.share)
                    self._give_up[partition].set()

    async def _contend(self, js: JetStreamContext, kv: KeyValue, members: KeyValue, partition: int) -> None:
        """Take the partition whenever it is abandoned, or free while this process holds less than its
        share; decide it while it is ours."""
        c = self.cluster
        lease = KvLease(kv, lease_key(partition), c.owner, c.terms)
        while not self._stop.is_set():
            held = None
            if c.max_partitions is None or len(self.owned) < c.max_partitions:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    held = await lease.try_acquire(may_create=len(self.owned) < self.share)
            if held is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), c.read_every_s)
                continue
            if lease.taken_from is not None and lease.taken_from != c.owner:
                # Its holder is dead: count it out at once, or the share would still count it and this
                # process would give up what it just took over, for nobody to take.
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await forget(members, lease.taken_from)
                    await self._count_members(members)
            assert self._nc is not None
            owner = PartitionOwner(
                self._nc,
                js,
                lease,
                held,
                partition,
                self.store_root,
                self._config,
                self._prices,
                snapshot_every_events=self._snapshot_every,
            )
            self.owned[partition] = owner
            self._give_up[partition] = asyncio.Event()
            try:
                await self._decide(owner, self._give_up[partition])
            finally:
                del self.owned[partition]
                await owner.close()

    async def _decide(self, owner: PartitionOwner, give_up: asyncio.Event) -> None:
        """Take the partition over and decide it until the process stops, the lease is lost or the
        partition is to be given up."""
        try:
            await owner.take()
            self.counters["taken"] += 1
            stop = asyncio.create_task(self._stop.wait())
            given_up = asyncio.create_task(give_up.wait())
            running = asyncio.create_task(owner.run())
            await asyncio.wait([stop, given_up, running], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            given_up.cancel()
            if running.done():
                running.result()  # raises what ended it
            else:
                running.cancel()
                self.counters["given_up"] += 1
        except LeaseLost as lost:
            self.counters["lease_lost"] += 1
            log.warning("partition %d: %s; it is no longer decided here", owner.partition, lost)
        except (nats.errors.Error, TimeoutError) as error:  # given up, so another process may take it
            log.warning(
                "partition %d: the cluster refused or did not answer (%r); giving it up",
                owner.partition,
                error,
            )
        except (JournalError, StoreError) as error:
            log.error("partition %d cannot be decided here: %s", owner.partition, error)
            raise
