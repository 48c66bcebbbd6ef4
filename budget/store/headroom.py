"""Disk headroom: the store stops writing while the filesystem still has room, never by running out.

Nothing unsafe is ever acknowledged (an append returns only after fsync), but a store that writes until
the disk is full fails wherever the space ran out -- half a segment in compaction, a snapshot -- and takes
its process down with it. Checking before each write that it would leave `min_free_bytes` turns that into
one clear StoreError at a clean point: before the append (nothing of it acknowledged), the flush or the
compaction (the log still holds every event).
"""

from __future__ import annotations

import os
from pathlib import Path

from budget.errors import StoreError

MIB = 1 << 20
DEFAULT_MIN_FREE_MB = 256  # the enforcer's --min-free-mb


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on the filesystem of `path`."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def ensure_headroom(root: Path, min_free_bytes: int, needed: int, doing: str) -> None:
    """StoreError unless writing `needed` more bytes for `doing` leaves `min_free_bytes` free."""
    if min_free_bytes <= 0:
        return
    free = free_bytes(root)
    if free - needed >= min_free_bytes:
        return
    raise StoreError(
        str(root),
        f"{size_text(free)} free on its filesystem; {doing} ({size_text(needed)}) would leave less than the "
        f"minimum of {size_text(min_free_bytes)} (--min-free-mb): stopped before the disk is full -- free "
        "some space (or lower the minimum) and start again",
    )


def size_text(count: int) -> str:
    """A byte count for people: bytes, KiB or MiB."""
    if count < MIB:
        return f"{count:,} bytes" if count < 1024 else f"{count / 1024:,.1f} KiB"
    return f"{count / MIB:,.1f} MiB"
