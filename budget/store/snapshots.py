"""Snapshots of the enforcer's ledger: named binary parts at a store seq, so a restart replays only the
events after that seq.

```
STORE/snapshots/<seq>/     the state after applying events 0..seq
  snapshot.json            {"version", "seq", "created", "parts": [{name, file, kind, size, sha256}]}
  <name>.npy | <name>.bin  a numpy array (.npy format) or raw bytes per part
```

A snapshot is written into a temporary directory (each file fsync'd), which is renamed into place and the
parent directory fsync'd: a crash leaves either no snapshot or a whole one. The newest two are kept, and
older ones are deleted only once a newer one is complete. Loading checks every part's size and sha256;
a damaged snapshot is passed over for the previous one. What the parts mean is the ledger's business
(budget/domain); a snapshot is an optimisation, never the truth: the journal is.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from budget.errors import SnapshotDamaged
from budget.store.manifest import fsync_dir

log = logging.getLogger("margins.store")

SNAPSHOTS = "snapshots"
SNAPSHOT_FILE = "snapshot.json"
SNAPSHOT_VERSION = 1
KEEP = 2
PART_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")

SnapshotPart = bytes | bytearray | memoryview | np.ndarray


def part_size(part: SnapshotPart) -> int:
    """The bytes a part holds (what writing it needs, give or take a header)."""
    return int(part.nbytes) if isinstance(part, np.ndarray | memoryview) else len(part)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A verified snapshot: its seq, where it lives, and its parts (numpy arrays or bytes, by name)."""

    seq: int
    path: Path
    parts: dict[str, bytes | np.ndarray]


class _HashingFile:
    """Writes through to a file and hashes what it writes (numpy writes .npy in chunks through it)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += len(view)
        return self.file.write(view)


class Snapshots:
    """The snapshots directory of one store: write, find the newest valid one, check, clean up."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / SNAPSHOTS
        self._lock = threading.Lock()  # one write at a time: pruning must not race a rename

    def seqs(self) -> list[int]:
        """The seqs of the complete snapshots, newest first."""
        if not self.dir.is_dir():
            return []
        return sorted((int(p.name) for p in self.dir.iterdir() if p.name.isdigit()), reverse=True)

    def path(self, seq: int) -> Path:
        return self.dir / f"{seq:016d}"

    def newest_written_at(self) -> float | None:
        """When the newest complete snapshot was written (its snapshot.json's mtime, Unix seconds); None
        when there is none. A directory listing and one stat: cheap enough for every metrics scrape, and
        unverified (loading checks the parts)."""
        for seq in self.seqs():
            try:
                return (self.path(seq) / SNAPSHOT_FILE).stat().st_mtime
            except OSError:  # pruned or half-removed meanwhile: look at the next one
                continue
        return None

    def write(self, seq: int, parts: Mapping[str, SnapshotPart]) -> Path:
        """Write a snapshot of `parts` at `seq` atomically and durably; keep the newest two."""
        for name in parts:
            if not PART_NAME.fullmatch(name):
                raise ValueError(f"snapshot part name {name!r}: use letters, digits, '_', '.', '-'")
        with self._lock:
            self.dir.mkdir(exist_ok=True)
            tmp = self.dir / f".tmp-{seq}-{uuid.uuid4().hex}"
            tmp.mkdir()
            try:
                entries = [_write_part(tmp, name, part) for name, part in parts.items()]
                meta = {
                    "version": SNAPSHOT_VERSION,
                    "seq": seq,
                    "created": datetime.now(UTC).isoformat(),
                    "parts": entries,
                }
                _write_durably(tmp / SNAPSHOT_FILE, json.dumps(meta, indent=1).encode())
                fsync_dir(tmp)
                final = self._install(tmp, seq)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._prune()
            return final

    def _install(self, tmp: Path, seq: int) -> Path:
        final = self.path(seq)
        if final.exists():
            try:
                self.load(final)
            except SnapshotDamaged:  # replace it: a snapshot is derived data, never the only copy
                trash = self.dir / f".trash-{seq}-{uuid.uuid4().hex}"
                os.rename(final, trash)
                os.rename(tmp, final)
                fsync_dir(self.dir)
                shutil.rmtree(trash, ignore_errors=True)
                return final
            shutil.rmtree(tmp, ignore_errors=True)  # the same state at the same seq is there already
            return final
        os.rename(tmp, final)
        fsync_dir(self.dir)
        return final

    def _prune(self) -> None:
        for seq in self.seqs()[KEEP:]:
            shutil.rmtree(self.path(seq), ignore_errors=True)

    def load(self, path: Path) -> Snapshot:
        """A snapshot's parts, every one checked against snapshot.json (else SnapshotDamaged)."""
        where = str(path.relative_to(self.root))
        try:
            meta = json.loads((path / SNAPSHOT_FILE).read_bytes())
            seq = int(meta["seq"])
            listed = [
                (str(p["name"]), str(p["file"]), str(p["kind"]), int(p["size"]), str(p["sha256"]))
                for p in meta["parts"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SnapshotDamaged(
                str(self.root), f"{where}/{SNAPSHOT_FILE} cannot be read: {error}"
            ) from error
        parts: dict[str, bytes | np.ndarray] = {}
        for name, file, kind, size, sha256 in listed:
            try:
                data = (path / file).read_bytes()
            except OSError as error:
                raise SnapshotDamaged(str(self.root), f"{where}/{file} cannot be read: {error}") from error
            if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
                raise SnapshotDamaged(str(self.root), f"{where}/{file} is damaged (size or sha256 differs)")
            parts[name] = _read_array(data) if kind == "npy" else data
        return Snapshot(seq=seq, path=path, parts=parts)

    def latest(self, max_seq: int) -> Snapshot | None:
        """The newest snapshot that verifies and is not past `max_seq` (the store's last seq), logging
        why each newer one was passed over; None when there is none."""
        for seq in self.seqs():
            if seq > max_seq:
                log.warning("snapshot at seq %d is past the store's last seq %d: not used", seq, max_seq)
                continue
            try:
                return self.load(self.path(seq))
            except SnapshotDamaged as error:
                log.warning("%s; falling back to an older snapshot or a full replay", error)
        return None

    def problems(self, max_seq: int) -> tuple[list[str], list[str]]:
        """(what was checked, problems) for `margins store check`."""
        checked, problems = [], []
        for seq in self.seqs():
            try:
                snapshot = self.load(self.path(seq))
            except SnapshotDamaged as error:
                problems.append(error.reason)
                continue
            if seq > max_seq:
                problems.append(f"{SNAPSHOTS}/{seq:016d} is past the store's last seq {max_seq}")
                continue
            checked.append(f"seq {seq} ({len(snapshot.parts)} parts)")
        return checked, problems

    def remove_unfinished(self) -> None:
        """Delete what a crash left of a write (never-renamed temporary directories)."""
        if self.dir.is_dir():
            for path in self.dir.iterdir():
                if path.name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(path, ignore_errors=True)


def _write_part(directory: Path, name: str, part: SnapshotPart) -> dict[str, Any]:
    is_array = isinstance(part, np.ndarray)
    file = f"{name}.npy" if is_array else f"{name}.bin"
    with (directory / file).open("wb") as raw:
        out = _HashingFile(raw)
        if isinstance(part, np.ndarray):
            np.lib.format.write_array(out, part, allow_pickle=False)
        else:
            out.write(part)
        raw.flush()
        os.fsync(raw.fileno())
    kind = "npy" if is_array else "bin"
    return {"name": name, "file": file, "kind": kind, "size": out.size, "sha256": out.digest.hexdigest()}


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _read_array(data: bytes) -> np.ndarray:
    array: np.ndarray = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    return array
