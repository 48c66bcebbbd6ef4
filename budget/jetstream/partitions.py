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
JOURNAL_PREFIX = "MARGINS_J"
LEASE_BUCKET = "margins_leases"
# The MQTT topic prefix of each partitioned kind: an enforcer hands a message to the same handler as the
# single-broker one does, under the topic an MQTT application would have published it on.
_TOPIC_PREFIX_OF_KIND = {
    "usage": "margins/usage/",
    "authorize": "margins/authorize/",
    "renew": "margins/renew/",
    "admin": "margins/admin/users/",
}

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
    """Every subject of one partition's input (the mapping's destinations)."""
    return f"margins.part.{partition}.>"


def partitioned_subject(partition: int, kind: str, user_id: str) -> str:
    """Where the mapping puts a message of `kind` (usage, authorize, renew, admin) for `user_id`."""
    return f"margins.part.{partition}.{kind}.{user_id}"


def journal_subject(partition: int) -> str:
    """Where the owner of a partition appends the events it decided (fenced: see budget.jetstream.lease).
    Outside the partition's input subjects: the journal has a stream of its own (budget.jetstream.streams)."""
    return f"margins.journal.{partition}"


def journal_stream_name(partition: int) -> str:
    """The JetStream stream holding one partition's journal."""
    return f"{JOURNAL_PREFIX}{partition}"


def topic_of_subject(subject: str) -> str | None:
    """The MQTT topic a partitioned subject stands for (`margins.part.3.usage.u42` -> `margins/usage/u42`),
    or None for a subject that is not one of a partition's inputs."""
    parts = subject.split(".", 4)
    if len(parts) != 5 or parts[0] != "margins" or parts[1] != "part" or not parts[2].isdigit():
        return None
    prefix = _TOPIC_PREFIX_OF_KIND.get(parts[3])
    return None if prefix is None else prefix + parts[4]


def subject_of_topic(topic: str) -> str:
    """The NATS subject of an MQTT topic, as nats-server's MQTT listener maps it: `/` is `.`. An MQTT
    application subscribed to the topic gets what is published on the subject."""
    return topic.replace("/", ".")


def lease_key(partition: int) -> str:
    """The key of a partition's lease in the lease bucket."""
    return f"partition.{partition}"
