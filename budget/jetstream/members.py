"""Which enforcers are alive on the cluster: each announces itself in a key-value bucket whose entries
expire, so the live ones are the keys still there. Enforcers use the count to share the partitions out
(budget.jetstream.lease.fair_share)."""

from __future__ import annotations

import re

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

MEMBERS_BUCKET = "margins_members"
_NOT_IN_A_KEY = re.compile(r"[^-_=A-Za-z0-9]")


async def open_members_bucket(js: JetStreamContext, expire_s: float, replicas: int = 3) -> KeyValue:
    """The members bucket (created if missing): an entry not renewed within `expire_s` is dropped."""
    config = KeyValueConfig(
        bucket=MEMBERS_BUCKET, history=1, ttl=expire_s, replicas=replicas, storage=StorageType.FILE
    )
    return await js.create_key_value(config)


def member_key(owner: str) -> str:
    """An enforcer's key in the bucket: its name with what a key cannot hold replaced."""
    return "member." + _NOT_IN_A_KEY.sub("_", owner)


async def announce(kv: KeyValue, owner: str) -> None:
    """Say (again) that `owner` is alive."""
    await kv.put(member_key(owner), owner.encode())


async def live_members(kv: KeyValue) -> int:
    """How many enforcers announced themselves within the bucket's expiry."""
    try:
        return len(await kv.keys())
    except NoKeysError:
        return 0


async def forget(kv: KeyValue, owner: str) -> None:
    """Count `owner` dead now (it let a lease lapse), not only once its entry expires; it counts again at
    its next announcement if it was only paused."""
    await kv.delete(member_key(owner))
