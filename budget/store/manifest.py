"""The on-disk layout of the event store: immutable Parquet segments and the manifest that lists them.

```
STORE/
  LOCK                                   held (flock) by the one writing process
  wal/<first seq>.jsonl                  write-ahead log: tagged JSON lines, fsync'd before append returns
  journal/<first>-<last>.parquet         every event in append order (seq, type, ts, user_id, month,
                                         reason, body = tagged JSON): the replay source
  usage/month=YYYY-MM/<first>-<last>.parquet
                                         usage rows, exactly events.USAGE_COLUMNS (source "live")
  rollup/month=YYYY-MM/<first>-<last>.parquet
                                         the same rows summed per user (user_id, month, spent_nanos,
                                         events, input_tokens, output_tokens): top spenders without a scan
  manifest.json                          the segments that make up the store now (atomically replaced)
```

Segments are written to a temporary name, fsync'd and renamed, then the manifest naming them is replaced
the same way: the manifest is the commit point. A reader takes the manifest and reads the files it lists;
compaction writes a merged file, swaps the manifest, and deletes the files it replaced only after a grace
period, so a reader holding the previous manifest still finds every file it names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budget.errors import StoreError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# The journal table: every event in append order, `body` its tagged JSON (the replay source).
# The rollup table: usage summed per (user, month) within one segment.
ROLLUP_COLUMNS: dict[str, str] = {
    "user_id": "VARCHAR",
    "month": "VARCHAR",
    "spent_nanos": "BIGINT",
    "events": "BIGINT",
    "input_tokens": "BIGINT",
    "output_tokens": "BIGINT",
}
JOURNAL_COLUMNS: dict[str, str] = {
    "seq": "BIGINT",
    "type": "VARCHAR",
    "ts": "TIMESTAMPTZ",
    "user_id": "VARCHAR",
    "month": "VARCHAR",
    "reason": "VARCHAR",
    "body": "VARCHAR",
}


@dataclass(frozen=True, slots=True)
class Segment:
    """One immutable Parquet file: its path relative to the store, the seq range it holds, its rows."""

    file: str
    first: int
    last: int
    rows: int
    month: str | None = None


@dataclass(slots=True)
class Manifest:
    """The segments that make up the store, and files waiting out the readers' grace period."""

    last_seq: int = -1
    journal: list[Segment] = field(default_factory=list)
    usage: list[Segment] = field(default_factory=list)
    rollup: list[Segment] = field(default_factory=list)
    retired: list[tuple[str, float]] = field(default_factory=list)

    def to_json(self) -> bytes:
        data = {
            "version": MANIFEST_VERSION,
            "last_seq": self.last_seq,
            "journal": [_segment_dict(s) for s in self.journal],
            "usage": [_segment_dict(s) for s in self.usage],
            "rollup": [_segment_dict(s) for s in self.rollup],
            "retired": [{"file": f, "at": at} for f, at in self.retired],
        }
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            raw = json.loads(data)
            return cls(
                last_seq=int(raw["last_seq"]),
                journal=[Segment(**s) for s in raw["journal"]],
                usage=[Segment(**s) for s in raw["usage"]],
                rollup=[Segment(**s) for s in raw.get("rollup", [])],
                retired=[(r["file"], float(r["at"])) for r in raw.get("retired", [])],
            )
        except (ValueError, KeyError, TypeError) as error:
            raise StoreError(where, f"manifest is unreadable: {error}") from error


def _segment_dict(segment: Segment) -> dict[str, Any]:
    out: dict[str, Any] = {"file": segment.file, "first": segment.first, "last": segment.last}
    out["rows"] = segment.rows
    if segment.month is not None:
        out["month"] = segment.month
    return out


def read_manifest(root: Path) -> Manifest:
    """The store's current manifest (empty when none was written yet); raises StoreError when `root` is
    not a margins store."""
    if not root.is_dir():
        raise StoreError(str(root), "no such directory")
    try:
        data = (root / MANIFEST).read_bytes()
    except FileNotFoundError:
        if not (root / "wal").is_dir():
            raise StoreError(str(root), "not a margins event store (no manifest.json, no wal/)") from None
        return Manifest()
    except OSError as error:
        raise StoreError(str(root), f"cannot read the manifest: {error}") from error
    return Manifest.from_json(data, str(root))


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """Move the finished file `tmp` to `path` so a crash leaves either the old file or the whole new one:
    fsync its data, rename it over `path`, fsync the directory."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a crash leaves either the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)  # a buffered write: all of it (a bare os.write may write only part)
    replace_durably(tmp, path)


def segment_name(first: int, last: int) -> str:
    """Zero-padded so names sort in seq order."""
    return f"{first:016d}-{last:016d}.parquet"
