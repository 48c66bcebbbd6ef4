"""A partitioned root: one event store per partition, `ROOT/partition=<p>/`, read as one.

The partitioned enforcer (README, "Scaling out") gives each partition its own ordinary event store,
written by whichever enforcer owns that partition. A reader that wants every user (`margins spend`) takes
one cut of each partition's store, a few ms apart: every user lives in exactly one partition, so a user's
figures are exact, while a total over users is the sum of N cuts that were not taken at the same instant.

What a root may be:

- a plain store (it has `manifest.json` or `wal/`): one cut, exactly as before partitions existed;
- a partitioned root: it is no store itself and holds at least one `partition=<p>` directory (p a decimal
  number, written as `str(p)`: `partition=07` is refused, so two names never mean one partition). A
  partition directory that is empty, or holds only the writer's LOCK, is an enforcer that just took the
  partition: no events yet. Other entries of the root (a README, a backup folder) are ignored.

Anything else -- no partition directory at all, a store beside partition directories, a `partition=`
name that is not a number, a partition directory that is not a store -- is one StoreError naming the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from budget.errors import StoreError
from budget.store.manifest import MANIFEST, Manifest
from budget.store.recovery import settled_survey

PARTITION_PREFIX = "partition="
# What an enforcer leaves in a partition directory before its store holds anything it would read.
_NOT_YET_A_STORE = {"LOCK"}


@dataclass(frozen=True, slots=True)
class StoreCut:
    """One store's manifest at the moment it was read: the segments a query may read under `root`."""

    root: Path
    manifest: Manifest
    partition: int | None = None  # None: a plain store


def is_store(path: Path) -> bool:
    """Does `path` look like a margins event store (a manifest, or a log directory)?"""
    return (path / MANIFEST).exists() or (path / "wal").is_dir()


def partition_number(entry: Path) -> int | None:
    """p for a directory named `partition=<p>` (decimal, no sign, no leading zero); None for an entry
    that does not claim to be a partition; StoreError for one that claims it badly (`partition=x`)."""
    if not entry.name.startswith(PARTITION_PREFIX):
        return None
    digits = entry.name[len(PARTITION_PREFIX) :]
    if not (digits.isascii() and digits.isdecimal()) or str(int(digits)) != digits:
        raise StoreError(
            str(entry), f"not a partition directory: expected {PARTITION_PREFIX}<p>, p a decimal number"
        )
    if not entry.is_dir():
        raise StoreError(str(entry), "a partition must be a directory")
    return int(digits)


def partition_dirs(root: Path) -> list[tuple[int, Path]]:
    """The partition directories of a partitioned root, by partition number; [] when `root` is a plain
    store. StoreError when `root` is neither, or mixes the two, or names a partition badly."""
    if not root.is_dir():
        raise StoreError(str(root), "no such directory")
    found: list[tuple[int, Path]] = []
    for entry in sorted(root.iterdir()):
        number = partition_number(entry)
        if number is not None:
            found.append((number, entry))
    if is_store(root):
        if found:
            raise StoreError(
                str(root),
                f"is an event store and also holds {found[0][1].name}/: a root is either one store or "
                f"only partitions ({PARTITION_PREFIX}<p>/), never both",
            )
        return []
    if not found:
        raise StoreError(
            str(root),
            f"not a margins event store (no {MANIFEST}, no wal/) nor a partitioned root "
            f"(no {PARTITION_PREFIX}<p>/ directory)",
        )
    return sorted(found)


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition directory of a partitioned root; `has_events` False: empty or only the writer's
    LOCK (an enforcer that just took the partition), no store yet."""

    number: int
    path: Path
    has_events: bool


def claims_partitions(root: Path) -> bool:
    """Does `root` hold any `partition=...` entry? (Then `list_partitions` judges it; else it is read as
    a plain store, with a plain store's messages.)"""
    return root.is_dir() and any(entry.name.startswith(PARTITION_PREFIX) for entry in root.iterdir())


def list_partitions(root: Path) -> list[Partition]:
    """The partitions of a partitioned root, in partition order; [] when `root` is a plain store.
    StoreError naming the path for a root or partition that is not what it should be."""
    found = []
    for number, path in partition_dirs(root):
        if is_store(path):
            found.append(Partition(number, path, has_events=True))
        elif {p.name for p in path.iterdir()} <= _NOT_YET_A_STORE:
            found.append(Partition(number, path, has_events=False))
        else:
            raise StoreError(str(path), f"not a margins event store (no {MANIFEST}, no wal/)")
    return found


def take_cuts(root: str | Path) -> list[StoreCut]:
    """One settled cut of each store under `root`: [the store's] for a plain store, else one per partition
    in partition order (an empty or just-taken partition: an empty manifest). Raises StoreError naming
    the path for a root or partition that is not what it should be, or whose files do not add up."""
    root = Path(root)
    partitions = list_partitions(root)
    if not partitions:
        return [StoreCut(root, settled_survey(root, decode_log=False).manifest)]
    return [StoreCut(p.path, _settled_manifest(p), p.number) for p in partitions]


def _settled_manifest(partition: Partition) -> Manifest:
    return settled_survey(partition.path, decode_log=False).manifest if partition.has_events else Manifest()
