"""Creating the partition streams on the cluster: one file-backed stream per partition, replicated.

One stream per partition rather than one stream with partition subjects: each stream is its own raft
group with its own leader, so the partitions' writes spread over the nodes, and a partition's journal
after a snapshot's seq is one range of one stream (README, "Scaling out").
"""

from __future__ import annotations

import asyncio
import time

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from budget.jetstream.partitions import partition_subjects, stream_name


def partition_stream_config(partition: int, replicas: int = 3) -> StreamConfig:
    """The stream of one partition: every message the mapping sends it plus its journal, kept on disk on
    `replicas` nodes; a full stream refuses new messages (so a publisher sees the refusal) rather than
    dropping old ones that a snapshot may not cover yet."""
    return StreamConfig(
        name=stream_name(partition),
        subjects=[partition_subjects(partition)],
        storage=StorageType.FILE,
        num_replicas=replicas,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
    )


async def ensure_partition_streams(
    js: JetStreamContext, partitions: int, replicas: int = 3, limit_s: float = 30.0
) -> None:
    """Create the streams of partitions 0..partitions-1 (an existing one with the same config is kept), and
    return once each has a leader: until then a publish to it finds no stream to answer."""
    for partition in range(partitions):
        await js.add_stream(partition_stream_config(partition, replicas))
    deadline = time.monotonic() + limit_s
    for partition in range(partitions):
        while (
            info := await js.stream_info(stream_name(partition))
        ).cluster is None or not info.cluster.leader:
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream_name(partition)} had no leader within {limit_s}s")
            await asyncio.sleep(0.05)


async def has_leader(js: JetStreamContext, partition: int) -> bool:
    """Whether a partition's stream has elected a leader (and so answers publishes)."""
    cluster = (await js.stream_info(stream_name(partition))).cluster
    return cluster is not None and bool(cluster.leader)
