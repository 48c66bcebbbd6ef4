"""Users -> partitions, and the NATS names of a partition: the same function the cluster's subject mapping
`{{partition(N,1)}}` applies (deploy/nats/nats-server.conf.template), so a reader or an admin tool can find
a user's partition without asking the server.

nats-server hashes the mapped token's bytes with 32-bit FNV-1a and takes the hash modulo N; a test checks
this module against a real server for many users.
"""

from __future__ import annotations

import re

# The subjects the server's mapping rewrites: what applications publish, with "/" as "." (MQTT's topic
# separator is NATS' subject separator on nats-server's MQTT listener).
PARTITIONED_PREFIXES = {
    "margins.usage.": "usage",
    "margins.authorize.": "authorize",
    "margins.renew.": "renew",
    "margins.admin.users.": "admin",
}
STREAM_PREFIX = "MARGINS_P"
LEASE_BUCKET = "margins_leases"

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
# What cannot be in one NATS subject token: its separator, its wildcards and whitespace (which ends a
# subject on the wire). MQTT adds its own wildcards, + and #, refused by budget.mqtt.topics already.
_NOT_IN_A_TOKEN = re.compile(r"[.*>\s]")


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash of `data`."""
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value


def partition_of(user_id: str, partitions: int) -> int:
    """The partition (0..partitions-1) the cluster's mapping puts `user_id` in, for every topic of theirs."""
    if partitions < 1:
        raise ValueError(f"the number of partitions must be at least 1, not {partitions}")
    return fnv1a_32(user_id.encode()) % partitions


def user_id_problem(user_id: str) -> str | None:
    """Why `user_id` cannot be one level of a partitioned subject, or None: the cluster needs every user id
    to be a single NATS subject token."""
    if not user_id:
        return "a user id on the cluster cannot be empty"
    if found := _NOT_IN_A_TOKEN.search(user_id):
        return (
            f"user id {user_id[:80]!r} holds {found.group()!r}: on the NATS cluster a user id must be one "
            "subject token (no '.', '*', '>' or whitespace)"
        )
    return None


def stream_name(partition: int) -> str:
    """The JetStream stream holding one partition's input and journal."""
    return f"{STREAM_PREFIX}{partition}"


def partition_subjects(partition: int) -> str:
    """Every subject of one partition (the mapping's destinations and its journal)."""
    return f"margins.part.{partition}.>"


def partitioned_subject(partition: int, kind: str, user_id: str) -> str:
    """Where the mapping puts a message of `kind` (usage, authorize, renew, admin) for `user_id`."""
    return f"margins.part.{partition}.{kind}.{user_id}"


def journal_subject(partition: int) -> str:
    """Where the owner of a partition appends the events it decided (fenced: see budget.jetstream.lease)."""
    return f"margins.part.{partition}.journal"


def lease_key(partition: int) -> str:
    """The key of a partition's lease in the lease bucket."""
    return f"partition.{partition}"
