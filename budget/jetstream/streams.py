"""Creating the partition streams on the cluster: two file-backed, replicated streams per partition -- its
input (`MARGINS_P<p>`: what applications send, a work queue its owner consumes) and its journal
(`MARGINS_J<p>`: the events its owners decided, kept).

Streams per partition rather than one stream with partition subjects: each stream is its own raft group
with its own leader, so the partitions' writes spread over the nodes, and a partition's journal after a
store seq is one range of one stream (README, "Scaling out"). Input and journal apart: the input is
deleted as it is acknowledged, the journal never; and nats-server 2.9's consumers take one subject filter,
so an input consumer would otherwise be handed the journal too.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from budget.errors import ClusterUnavailable
from budget.jetstream.partitions import (
    journal_stream_name,
    journal_subject,
    partition_subjects,
    stream_name,
)
from budget.jetstream.setup_calls import SETUP_LIMIT_S, until_answered


def partition_stream_config(partition: int, replicas: int = 3) -> StreamConfig:
    """The input stream of one partition: every message the mapping sends it, kept on disk on `replicas`
    nodes until its owner acknowledges it (after the commit of its effect); a full stream refuses new
    messages (so a publisher sees the refusal) rather than dropping undecided ones."""
    return StreamConfig(
        name=stream_name(partition),
        subjects=[partition_subjects(partition)],
        storage=StorageType.FILE,
        num_replicas=replicas,
        retention=RetentionPolicy.WORK_QUEUE,
        discard=DiscardPolicy.NEW,
    )


def journal_stream_config(partition: int, replicas: int = 3) -> StreamConfig:
    """The journal stream of one partition: every event its owners decided, in order, kept (a full one
    refuses appends rather than dropping events a store may not hold yet)."""
    return StreamConfig(
        name=journal_stream_name(partition),
        subjects=[journal_subject(partition)],
        storage=StorageType.FILE,
        num_replicas=replicas,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
    )


async def ensure_partition_streams(
    js: JetStreamContext, partitions: int, replicas: int = 3, limit_s: float = SETUP_LIMIT_S
) -> None:
    """Create the input and journal streams of partitions 0..partitions-1 (an existing one with the same
    config is kept), and return once each has a leader: until then a publish to it finds no stream to
    answer. Raises ClusterUnavailable when the cluster does not answer within `limit_s`."""
    for partition in range(partitions):
        configs = (partition_stream_config(partition, replicas), journal_stream_config(partition, replicas))
        for config in configs:
            await until_answered(f"creating stream {config.name}", partial(js.add_stream, config), limit_s)
    deadline = time.monotonic() + limit_s
    for partition in range(partitions):
        for name in (stream_name(partition), journal_stream_name(partition)):
            while not await _stream_has_leader(js, name, limit_s):
                if time.monotonic() > deadline:
                    raise ClusterUnavailable(f"with a leader for stream {name}", limit_s, "no leader elected")
                await asyncio.sleep(0.05)


async def _stream_has_leader(js: JetStreamContext, name: str, limit_s: float) -> bool:
    info = await until_answered(f"the state of stream {name}", partial(js.stream_info, name), limit_s)
    return info.cluster is not None and bool(info.cluster.leader)


async def has_leader(js: JetStreamContext, partition: int) -> bool:
    """Whether a partition's stream has elected a leader (and so answers publishes)."""
    cluster = (await js.stream_info(stream_name(partition))).cluster
    return cluster is not None and bool(cluster.leader)
