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
  manifest.json                          the segments that make up the store now (atomically replaced),
                                         each with its seq range, row count, size and sha256
  snapshots/<seq>/                       ledger snapshots at a seq: named parts + snapshot.json (checksums)
  quarantine/                            files the store could not account for, kept for inspection
```

Segments are written to a temporary name, fsync'd and renamed, then the manifest naming them is replaced
the same way: the manifest is the commit point. A reader takes the manifest and reads the files it lists,
checking each against the size and sha256 the manifest records; compaction writes a merged file, swaps the
manifest, and deletes the files it replaced only after a grace period, so a reader holding the previous
manifest still finds every file it names.

Manifest version 1 carried no checksums: its segments are checked by their Parquet row counts until the
writer next opens the store, which hashes them once and writes version 2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budget.errors import StoreError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
SEGMENT_KINDS = ("journal", "usage", "rollup")
REPAIR_COMMAND = "margins store repair"
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
    """One immutable Parquet file: its path relative to the store, the seq range it holds, its rows, and
    (from manifest version 2) its size in bytes and sha256, which readers check before they trust it."""

    file: str
    first: int
    last: int
    rows: int
    month: str | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(slots=True)
class Manifest:
    """The segments that make up the store, and files waiting out the readers' grace period."""

    last_seq: int = -1
    journal: list[Segment] = field(default_factory=list)
    usage: list[Segment] = field(default_factory=list)
    rollup: list[Segment] = field(default_factory=list)
    retired: list[tuple[str, float]] = field(default_factory=list)

    @property
    def segments(self) -> list[Segment]:
        """Every live segment: journal, usage, rollup."""
        return [*self.journal, *self.usage, *self.rollup]

    @property
    def version(self) -> int:
        """2 once every segment carries its checksum, 1 before (as read from an older store)."""
        return MANIFEST_VERSION if all(s.sha256 is not None for s in self.segments) else 1

    def to_json(self) -> bytes:
        data = {
            "version": self.version,
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
            version = raw.get("version", 1)
            if version not in (1, MANIFEST_VERSION):
                raise StoreError(where, f"{MANIFEST} is version {version}, newer than this margins reads")
            return cls(
                last_seq=int(raw["last_seq"]),
                journal=[Segment(**s) for s in raw["journal"]],
                usage=[Segment(**s) for s in raw["usage"]],
                rollup=[Segment(**s) for s in raw.get("rollup", [])],
                retired=[(r["file"], float(r["at"])) for r in raw.get("retired", [])],
            )
        except (ValueError, KeyError, TypeError) as error:
            raise StoreError(where, f"{MANIFEST} is unreadable ({error}); {repair_hint(where)}") from error


def _segment_dict(segment: Segment) -> dict[str, Any]:
    out: dict[str, Any] = {"file": segment.file, "first": segment.first, "last": segment.last}
    out["rows"] = segment.rows
    if segment.month is not None:
        out["month"] = segment.month
    if segment.size is not None:
        out["size"] = segment.size
    if segment.sha256 is not None:
        out["sha256"] = segment.sha256
    return out


def repair_hint(root: str | Path) -> str:
    """The sentence that tells what to run when a store's files do not add up."""
    return f"`{REPAIR_COMMAND} {root}` rebuilds it from the journal and the log"


def read_manifest(root: Path) -> Manifest:
    """The store's manifest as written (empty when there is none yet); raises StoreError when `root` is
    not a margins store. Whether the files on disk agree with it is budget.store.recovery's question."""
    manifest = read_manifest_or_none(root)
    return Manifest() if manifest is None else manifest


def read_manifest_or_none(root: Path) -> Manifest | None:
    """The manifest as written, or None when there is none yet (raises StoreError when `root` is not a
    margins store or the manifest cannot be read)."""
    if not root.is_dir():
        raise StoreError(str(root), "no such directory")
    try:
        data = (root / MANIFEST).read_bytes()
    except FileNotFoundError:
        if not (root / "wal").is_dir():
            raise StoreError(str(root), "not a margins event store (no manifest.json, no wal/)") from None
        return None
    except OSError as error:
        raise StoreError(str(root), f"cannot read {MANIFEST}: {error}") from error
    return Manifest.from_json(data, str(root))


def segment_files(root: Path) -> list[str]:
    """The Parquet files (and unfinished `.tmp` ones) under journal/, usage/ and rollup/, relative to the
    store, sorted."""
    found = []
    for kind in SEGMENT_KINDS:
        base = root / kind
        if base.is_dir():
            found += [str(p.relative_to(root)) for p in base.rglob("*.parquet*") if p.is_file()]
    return sorted(found)


def log_starts(root: Path) -> list[int]:
    """The first seqs of the log files in wal/, sorted (a log file is named by its first seq)."""
    wal = root / "wal"
    if not wal.is_dir():
        return []
    return sorted(int(p.stem) for p in wal.glob("*.jsonl") if p.stem.isdigit())


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


@dataclass(frozen=True, slots=True)
class SegmentName:
    """What a segment's path says of it: kind, month partition (usage and rollup) and seq range."""

    kind: str
    month: str | None
    first: int
    last: int


def parse_segment_path(file: str) -> SegmentName | None:
    """`journal/<first>-<last>.parquet` or `usage|rollup/month=YYYY-MM/<first>-<last>.parquet`, else
    None."""
    parts = file.split("/")
    if len(parts) not in (2, 3) or parts[0] not in SEGMENT_KINDS or not parts[-1].endswith(".parquet"):
        return None
    month = None
    if len(parts) == 3:
        if parts[0] == "journal" or not parts[1].startswith("month="):
            return None
        month = parts[1][len("month=") :]
    elif parts[0] != "journal":
        return None
    first, dash, last = parts[-1][: -len(".parquet")].partition("-")
    if not (dash and first.isdigit() and last.isdigit()) or int(first) > int(last):
        return None
    return SegmentName(parts[0], month, int(first), int(last))
