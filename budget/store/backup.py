"""`margins store backup`: a consistent, verified copy of a store, taken beside its running writer.

The copy is one cut of the store, taken the way budget.store.reader takes one: the manifest, open file
handles on every segment it lists (compaction may retire and later delete them; an open file stays
readable), and the whole log lines past the manifest's last seq. Then:

1. every listed segment is copied byte for byte (a hard link would share the very blocks a disk fault
   damages), hashed while it is copied and checked against the size and sha256 the manifest records;
2. the newest ledger snapshot at or below the cut, if any, is copied and verified (a snapshot the writer
   prunes meanwhile, or one that does not verify, is passed over for the next older one);
3. the log lines of the cut go into one log file, whole lines only;
4. the destination's manifest is written last, atomically: until it exists the destination holds
   segments but no manifest, which `margins store check` and the writer refuse -- an interrupted backup
   never looks complete.

A segment that does not match its manifest entry stops the backup with a StoreError naming the file, and
what was copied so far is removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from budget.errors import SnapshotDamaged, StoreError
from budget.store.integrity import CHUNK, damaged, digest_problem, segment_problem, with_checksum
from budget.store.manifest import (
    MANIFEST,
    Manifest,
    Segment,
    fsync_dir,
    read_manifest_or_none,
    replace_durably,
    segment_files,
    write_atomic,
)
from budget.store.partitioned import Partition
from budget.store.recovery import SURVEY_ATTEMPTS, assess, no_cut
from budget.store.snapshots import SNAPSHOTS, Snapshots
from budget.store.wal import LogFile, log_names, read_log_file

# Where a partitioned backup is written before its partitions are moved into place.
STAGING = ".partial"


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What a backup copied: the events up to `last_seq`, the files and bytes, how long it took."""

    last_seq: int
    segments: int
    log_lines: int
    snapshot_seq: int | None
    bytes: int
    seconds: float

    @property
    def events(self) -> int:
        """Events in the copy (seqs 0..last_seq)."""
        return self.last_seq + 1

    def summary(self, source: Path, dest: Path) -> str:
        """The line `margins store backup` ends with."""
        snapshot = "no snapshot" if self.snapshot_seq is None else f"snapshot at seq {self.snapshot_seq}"
        return (
            f"backed up {self.events} events (seq 0..{self.last_seq}) from {source} to {dest}: "
            f"{self.segments} segments, {self.log_lines} log lines, {snapshot}; "
            f"{self.bytes} bytes in {self.seconds:.2f} s"
        )


@dataclass(slots=True)
class _Cut:
    manifest: Manifest
    opened: list[tuple[Segment, int]]  # every listed segment with an open file descriptor
    log_bodies: list[bytes]  # the whole log lines after the manifest's last seq, in order

    @property
    def last_seq(self) -> int:
        return self.manifest.last_seq + len(self.log_bodies)

    def close(self) -> None:
        for _, fd in self.opened:
            os.close(fd)
        self.opened = []


def backup_store(source: Path, dest: Path, say: Callable[[str], None] | None = None) -> BackupReport:
    """Copy the store at `source` into `dest` (new or empty) as described in the module docstring.

    Raises StoreError when `source` is no store or its files do not add up, when a segment does not
    match the manifest (naming it), or when `dest` is not an empty directory."""
    started = time.monotonic()
    _check_destination(dest)
    cut = _take_cut(source)
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        report = _copy(source, dest, cut, say or (lambda _: None), started)
    except BaseException:
        _remove_partial(dest, created)
        raise
    finally:
        cut.close()
    return report


def backup_partitions(
    partitions: Sequence[Partition], dest: Path, say: Callable[[str], None] | None = None
) -> int:
    """Back up each partition of a partitioned root into `dest/partition=<p>/` (`dest` new or empty),
    each its own cut, one after the other; a partition with no events yet becomes an empty directory.
    Each partition's lines go to `say` prefixed by its name. The number of events copied.

    Everything is written under `dest/.partial/` and moved up, one rename per partition, only once every
    partition is copied: an interrupted backup holds no partition and is refused as a store. On a
    StoreError or OSError what was written is removed."""
    say = say or (lambda _: None)
    _check_destination(dest)
    created = not dest.exists()
    staging = dest / STAGING
    events = 0
    try:
        staging.mkdir(parents=True)
        for partition in partitions:
            target = staging / partition.path.name
            if not partition.has_events:
                target.mkdir()
                say(f"{partition.path.name}: no events yet: an empty {target.name}/")
                continue
            prefixed = _prefixed(partition.path.name, say)
            report = backup_store(partition.path, target, say=prefixed)
            prefixed(report.summary(partition.path, dest / partition.path.name))
            events += report.events
        for partition in partitions:
            os.rename(staging / partition.path.name, dest / partition.path.name)
        staging.rmdir()
        fsync_dir(dest)
    except BaseException:
        _remove_partial(dest, created)
        raise
    return events


def _prefixed(name: str, say: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: say(f"{name}: {line}")


def _check_destination(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise StoreError(str(dest), "the backup destination is a file; give a new or empty directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise StoreError(str(dest), "the backup destination is not empty; give a new or empty directory")


def _take_cut(root: Path) -> _Cut:
    for _ in range(SURVEY_ATTEMPTS):
        cut = _try_cut(root)
        if cut is not None:
            return cut
    raise no_cut(root, "backup")


def _try_cut(root: Path) -> _Cut | None:
    """One attempt; None when the writer moved the manifest on meanwhile (look again)."""
    found = read_manifest_or_none(root)
    manifest = Manifest() if found is None else found
    cut = _Cut(manifest, [], [])
    try:
        for segment in manifest.segments:
            cut.opened.append((segment, os.open(root / segment.file, os.O_RDONLY)))
        logs: list[LogFile] = []
        for name in log_names(root):
            try:
                data = (root / name).read_bytes()
            except FileNotFoundError:
                continue  # flushed and removed since it was listed
            logs.append(read_log_file(root, name, manifest.last_seq, data=data))
    except FileNotFoundError:
        cut.close()
        return None  # a listed file went: the manifest moved on
    if assess(manifest, found is None, segment_files(root), logs).problems:
        cut.close()
        return None
    # Past the manifest the log files continue one another (assess ruled out gaps); a torn tail of the
    # newest one is an append in progress and is not among the bodies.
    expected = manifest.last_seq + 1
    for log in logs:
        skip = expected - log.first_body_seq
        if log.bodies and 0 <= skip < len(log.bodies):
            cut.log_bodies += log.bodies[skip:]
            expected += len(log.bodies) - skip
    return cut


def _copy(source: Path, dest: Path, cut: _Cut, say: Callable[[str], None], started: float) -> BackupReport:
    copied: dict[str, Segment] = {}
    total = 0
    for segment, fd in cut.opened:
        copied[segment.file] = _copy_segment(source, dest, segment, fd)
        total += copied[segment.file].size or 0
    say(f"segments: {len(copied)} copied and verified ({total} bytes)")
    snapshot_seq, snapshot_bytes = _copy_snapshot(source, dest, cut.last_seq, say)
    total += snapshot_bytes
    (dest / "wal").mkdir(exist_ok=True)
    if cut.log_bodies:
        data = b"\n".join(cut.log_bodies) + b"\n"
        log_path = dest / "wal" / f"{cut.manifest.last_seq + 1:016d}.jsonl"
        _write_new(log_path, data)
        total += len(data)
        say(f"log: {len(cut.log_bodies)} lines after seq {cut.manifest.last_seq} ({len(data)} bytes)")
    fsync_dir(dest / "wal")
    old = cut.manifest
    manifest = Manifest(
        last_seq=old.last_seq,
        journal=[copied[s.file] for s in old.journal],
        usage=[copied[s.file] for s in old.usage],
        rollup=[copied[s.file] for s in old.rollup],
    )
    write_atomic(dest / MANIFEST, manifest.to_json())
    fsync_dir(dest)
    return BackupReport(
        last_seq=cut.last_seq,
        segments=len(copied),
        log_lines=len(cut.log_bodies),
        snapshot_seq=snapshot_seq,
        bytes=total,
        seconds=time.monotonic() - started,
    )


def _copy_segment(source: Path, dest: Path, segment: Segment, fd: int) -> Segment:
    """Copy one segment from its open descriptor, checking the copy against the manifest's entry; the
    entry as the destination's manifest lists it (with its checksum, also for a version-1 entry)."""
    target = dest / segment.file
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    digest = hashlib.sha256()
    size = 0
    with tmp.open("wb") as out:
        while chunk := os.pread(fd, CHUNK, size):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    if segment.sha256 is not None:
        problem = digest_problem(segment, digest.hexdigest(), size)
    else:  # version 1 recorded no checksum: the copy must at least be Parquet with the listed rows
        problem = segment_problem(dest, replace(segment, file=tmp.relative_to(dest).as_posix()))
    if problem is not None:
        raise damaged(source, problem)
    replace_durably(tmp, target)
    return segment if segment.sha256 is not None else with_checksum(dest, segment)


def _copy_snapshot(
    source: Path, dest: Path, last_seq: int, say: Callable[[str], None]
) -> tuple[int | None, int]:
    """Copy the newest snapshot at or below `last_seq` that verifies; (its seq or None, bytes copied)."""
    origin, copies = Snapshots(source), Snapshots(dest)
    for seq in origin.seqs():
        if seq > last_seq:
            continue
        copies.dir.mkdir(exist_ok=True)
        tmp = copies.dir / f".tmp-{seq}-backup"
        try:
            shutil.copytree(origin.path(seq), tmp)
            copies.load(tmp)
        except (OSError, shutil.Error, SnapshotDamaged) as error:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = error.reason if isinstance(error, SnapshotDamaged) else "removed while copying"
            say(f"{SNAPSHOTS}: the one at seq {seq} not copied ({reason}); trying an older one")
            continue
        size = sum(p.stat().st_size for p in tmp.iterdir())
        for path in tmp.iterdir():
            _fsync(path)
        fsync_dir(tmp)
        os.rename(tmp, copies.path(seq))
        fsync_dir(copies.dir)
        say(f"{SNAPSHOTS}: the one at seq {seq} copied and verified ({size} bytes)")
        return seq, size
    return None, 0


def _write_new(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    replace_durably(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_partial(dest: Path, created: bool) -> None:
    """Remove what the backup wrote (`dest` was new or empty before it began)."""
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for path in dest.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
