"""The durable event store: one writing process appends, any process queries the Parquet segments.

`append(events)` writes the batch to an fsync'd write-ahead log and returns only once it is durable, so the
enforcer may acknowledge the messages behind it. About once a second (and on `flush()` / `close()`) the
pending events become immutable Parquet segments (see budget/store/segments.py) that DuckDB reads in
place from other processes, and the log they came from is deleted. Small segments are compacted in the
background.

Why not write DuckDB tables directly: DuckDB admits one writing process per database file and a reader
cannot open a file another process is writing; immutable files listed by an atomically replaced manifest
give readers a consistent snapshot with no lock at all, and the layout works on object storage too.

Opening a store recovers it, and never removes a file it cannot account for (budget/store/recovery.py):
a segment the manifest does not list is deleted only when the log (an interrupted flush) or verified
listed segments (an interrupted compaction) still hold its events, and moved to quarantine/ otherwise; a
missing or stale manifest, or a log that does not continue where the manifest ends, is a StoreError
naming the file and `margins store repair`. Log lines past the manifest's last seq are the events
appended since, and a torn tail of the newest log file (an append that never returned) is cut off.

Every write first checks that the filesystem keeps `min_free_bytes` free afterwards
(budget/store/headroom.py), so a nearly full disk stops the store with one clear error, not halfway
through a segment. Ledger snapshots live beside the segments (budget/store/snapshots.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import msgspec

from budget.domain.events import Event
from budget.errors import StoreError
from budget.store.headroom import DEFAULT_MIN_FREE_MB, MIB, ensure_headroom
from budget.store.integrity import check_present, damaged, read_verified, segment_problem, with_checksum
from budget.store.manifest import Manifest, Segment, fsync_dir, write_atomic
from budget.store.recovery import apply_recovery, survey
from budget.store.segment_writer import SegmentWriter, merge_run, write_batch
from budget.store.segments import decode_segment, journal_bodies
from budget.store.snapshots import Snapshot, SnapshotPart, Snapshots, part_size

FLUSH_INTERVAL_S = 1.0
RETIRE_GRACE_S = 60.0  # a reader holding an older manifest finishes its query well within this
COMPACT_MIN_SEGMENTS = 8  # merge once this many small segments have piled up
COMPACT_MAX_ROWS = 2_000_000  # a segment this large is left alone

_encoder = msgspec.json.Encoder()


# The reason a store refuses to open while another process writes it (a partition's new owner waits on it).
HELD_ELSEWHERE = "another process has this store open for writing"


class EventStore:
    """A directory of events: durable append, replay in append order, Parquet segments for queries.

    Use `EventStore.open(path)` (a context manager). Only one process may hold a store open for writing;
    readers use budget.store.queries and never open an EventStore.
    """

    def __init__(self, root: Path, flush_interval: float | None, min_free_bytes: int) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()  # guards the log and the pending batch
        self._flush_lock = threading.Lock()  # one flush / compaction at a time
        self._lock_fd = -1
        self._wal_fd = -1
        self._wal_path: Path | None = None
        self._next_seq = 0
        self._pending: list[Event] = []
        self._pending_bodies: list[bytes] = []
        self._manifest = Manifest()
        self._closed = False
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._flush_interval = flush_interval
        self._replaying = 0  # replays in progress: retired files stay until they finish
        self.compacted_rows = 0  # rows rewritten by compaction since open (its write amplification)
        self._writer: SegmentWriter | None = None
        self._snapshots = Snapshots(root)
        self._snapshot_thread: ThreadPoolExecutor | None = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        flush_interval: float | None = FLUSH_INTERVAL_S,
        offload: bool | None = None,
        min_free_bytes: int = DEFAULT_MIN_FREE_MB * MIB,
    ) -> EventStore:
        """Open (creating if needed) and recover the store at `path`; raises StoreError when another
        process holds it, when its files do not add up (see the module docstring), or when its filesystem
        has less than `min_free_bytes` free. `flush_interval` None disables the background flusher (call
        `flush()`).

        `offload` builds and writes segments in a child process so this process's GIL stays with its own
        work (default: when the background flusher runs)."""
        root = Path(path)
        store = cls(root, flush_interval, min_free_bytes)
        if offload if offload is not None else flush_interval is not None:
            store._writer = SegmentWriter()
        try:
            store._open()
        except OSError as error:
            store._release()
            raise StoreError(str(root), f"cannot open: {error}") from error
        except BaseException:
            store._release()
            raise
        if flush_interval is not None:
            store._thread = threading.Thread(target=store._flusher, name="margins-store-flush", daemon=True)
            store._thread.start()
        return store

    def _open(self) -> None:
        (self.root / "wal").mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(str(self.root), HELD_ELSEWHERE) from None
        ensure_headroom(self.root, self.min_free_bytes, 0, "opening the store")
        found = survey(self.root, decode_log=True)
        found.raise_problems(self.root)
        check_present(self.root, found.manifest.segments)
        self._manifest = found.manifest
        if found.manifest.version < 2:
            self._add_checksums()
        apply_recovery(self.root, found)
        self._snapshots.remove_unfinished()
        self._next_seq = self._manifest.last_seq + 1
        for log in found.log:  # the gaps are ruled out: these are the lines after the manifest, in order
            skip = self._next_seq - log.first_body_seq
            if log.bodies and skip < len(log.bodies):
                self._pending += log.events[skip:]
                self._pending_bodies += log.bodies[skip:]
                self._next_seq += len(log.bodies) - skip
        self._start_wal()
        self.flush()

    def _add_checksums(self) -> None:
        """Upgrade a version-1 manifest: check each segment's row count, then record its size and
        sha256 (what the file holds from now on is what readers will check against)."""
        old = self._manifest
        for segment in old.segments:
            problem = segment_problem(self.root, segment)
            if problem is not None:
                raise damaged(self.root, problem)
        self._commit(
            Manifest(
                last_seq=old.last_seq,
                journal=[with_checksum(self.root, s) for s in old.journal],
                usage=[with_checksum(self.root, s) for s in old.usage],
                rollup=[with_checksum(self.root, s) for s in old.rollup],
                retired=old.retired,
            )
        )

    def _start_wal(self) -> None:
        """Begin a new log file named by the next seq (the previous ones go once flushed)."""
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
        self._wal_path = self.root / "wal" / f"{self._next_seq:016d}.jsonl"
        self._wal_fd = os.open(self._wal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fsync_dir(self._wal_path.parent)

    # -- writing ----------------------------------------------------------------------------------

    def append(self, events: Iterable[Event]) -> int:
        """Append a batch durably: returns only once every event is fsync'd to the log, with the seq of
        the store's last event (the batch's last, unless it was empty).

        Raises StoreError -- and writes nothing -- when the write would leave less than `min_free_bytes`
        free; a write that fails halfway leaves the store refusing every later append (the next open cuts
        the unacknowledged tail)."""
        batch = list(events)
        if not batch:
            return self._next_seq - 1
        bodies = [_encoder.encode(e) for e in batch]
        data = b"\n".join(bodies) + b"\n"
        with self._lock:
            self._check_open()
            ensure_headroom(self.root, self.min_free_bytes, len(data), "appending to the log")
            try:
                written = 0
                while written < len(data):
                    written += os.write(self._wal_fd, data[written:])
                os.fdatasync(self._wal_fd)
            except OSError as error:
                self._error = StoreError(str(self.root), f"cannot append to {self._wal_path}: {error}")
                raise self._error from error
            self._pending.extend(batch)
            self._pending_bodies.extend(bodies)
            self._next_seq += len(batch)
            return self._next_seq - 1

    @property
    def last_seq(self) -> int:
        """The seq of the last event appended (-1 for an empty store)."""
        return self._next_seq - 1

    @property
    def _pending_first(self) -> int:
        """The seq of the first pending event: the pending events are the last ones appended."""
        return self._next_seq - len(self._pending)

    def flush(self) -> None:
        """Turn the pending events into Parquet segments now (readers see them once this returns)."""
        with self._flush_lock:
            with self._lock:
                if not self._pending:
                    return
                # The segments take less than the log lines they come from (columnar, compressed).
                needed = sum(map(len, self._pending_bodies))
                ensure_headroom(self.root, self.min_free_bytes, needed, "writing segments")
                events, bodies, first = self._pending, self._pending_bodies, self._pending_first
                self._pending, self._pending_bodies = [], []
                self._start_wal()
                old_wals = [p for p in (self.root / "wal").glob("*.jsonl") if p != self._wal_path]
            try:
                self._write_segments(bodies, first, [str(p) for p in old_wals])
            except BaseException:
                with self._lock:  # keep them pending: the log still holds them
                    self._pending[:0], self._pending_bodies[:0] = events, bodies
                raise
            for wal in old_wals:
                wal.unlink(missing_ok=True)

    def _write_segments(self, bodies: list[bytes], first: int, wal_files: list[str]) -> None:
        last = first + len(bodies) - 1
        root = str(self.root)
        written = None if self._writer is None else self._writer.write_batch(root, first, last, wal_files)
        if written is None:
            written = write_batch(root, first, last, bodies, wal_files)
        journal, usage, rollup = written
        manifest = self._manifest
        self._commit(
            Manifest(
                last_seq=last,
                journal=[*manifest.journal, journal],
                usage=[*manifest.usage, *usage],
                rollup=[*manifest.rollup, *rollup],
                retired=manifest.retired,
            )
        )

    def _commit(self, manifest: Manifest) -> None:
        """Make `manifest` the store's, then delete retired files past the readers' grace period (never
        while this process replays: its reading may outlast the grace period)."""
        now = time.time()
        expired = [f for f, at in manifest.retired if now - at >= RETIRE_GRACE_S and not self._replaying]
        gone = set(expired)
        manifest.retired = [(f, at) for f, at in manifest.retired if f not in gone]
        write_atomic(self.root / "manifest.json", manifest.to_json())
        self._manifest = manifest
        for file in expired:
            (self.root / file).unlink(missing_ok=True)

    def compact(self, min_segments: int = COMPACT_MIN_SEGMENTS) -> None:
        """Merge runs of small segments (journal: consecutive ones; usage and rollup: per month)."""
        with self._flush_lock:
            old = self._manifest
            journal = self._merge_run(old.journal, min_segments, "journal", None)
            usage: list[Segment] = []
            rollup: list[Segment] = []
            for kind, segments, merged in (("usage", old.usage, usage), ("rollup", old.rollup, rollup)):
                for month in sorted({s.month or "" for s in segments}):
                    merged.extend(
                        self._merge_run([s for s in segments if s.month == month], min_segments, kind, month)
                    )
            if (journal, usage, rollup) == (old.journal, old.usage, old.rollup):
                return
            kept = {s.file for s in (*journal, *usage, *rollup)}
            retired = [s.file for s in (*old.journal, *old.usage, *old.rollup) if s.file not in kept]
            now = time.time()
            self._commit(
                Manifest(
                    last_seq=old.last_seq,
                    journal=journal,
                    usage=sorted(usage, key=lambda s: (s.first, s.month or "")),
                    rollup=sorted(rollup, key=lambda s: (s.first, s.month or "")),
                    retired=[*old.retired, *((f, now) for f in retired)],
                )
            )

    def _merge_run(
        self, segments: list[Segment], min_segments: int, kind: str, month: str | None
    ) -> list[Segment]:
        """Merge the newest run of small segments in which no segment outweighs twice all newer ones
        together, once it holds `min_segments`. Like a binary counter, a row is rewritten O(log n) times,
        not once per merge; journal runs stay contiguous in seq so replay reads file after file."""
        start, total = len(segments), 0
        while start > 0:
            older = segments[start - 1]
            if older.rows >= COMPACT_MAX_ROWS or (total and older.rows > 2 * total):
                break
            total += older.rows
            start -= 1
        run = segments[start:]
        if len(run) < max(2, min_segments):
            return segments
        needed = sum(s.size or 0 for s in run)  # the replaced files stay for the readers' grace period
        ensure_headroom(self.root, self.min_free_bytes, needed, "compacting segments")
        merged = None if self._writer is None else self._writer.merge_run(str(self.root), kind, month, run)
        if merged is None:
            merged = merge_run(str(self.root), kind, month, run)
        self.compacted_rows += merged.rows
        return [*segments[:start], merged]

    def _flusher(self) -> None:
        assert self._flush_interval is not None
        while not self._stop.wait(self._flush_interval):
            try:
                self.flush()
                self.compact()
            except BaseException as error:  # surfaced by the next append / close
                self._error = error
                return

    # -- reading ----------------------------------------------------------------------------------

    def replay(self, after_seq: int = -1) -> Iterator[Event]:
        """Every event after `after_seq` (default: all) in append order: the segments, then what is still
        pending. Journal segments wholly at or before `after_seq` are not read; each one read is checked
        against the manifest first (a damaged one is a StoreError naming it)."""
        with self._flush_lock, self._lock:  # one consistent cut: no flush moves events in between
            segments = [s for s in self._manifest.journal if s.last > after_seq]
            pending = list(self._pending[max(0, after_seq + 1 - self._pending_first) :])
        self._replaying += 1
        try:
            for segment in segments:
                data = read_verified(self.root, segment)
                for bodies in journal_bodies(self.root, segment, data, after_seq):
                    yield from decode_segment(self.root, segment, bodies)
        finally:
            self._replaying -= 1
        yield from pending

    # -- snapshots --------------------------------------------------------------------------------

    def write_snapshot(self, seq: int, parts: Mapping[str, SnapshotPart]) -> Path:
        """Store `parts` (numpy arrays or bytes, by name) as the snapshot at `seq` -- the state after
        events 0..seq -- atomically and durably, keeping the newest two; returns its directory.

        Blocks until the snapshot is durable; `snapshot_in_background` does the same off the caller's
        thread. `parts` must not change meanwhile: pass copies."""
        if not -1 <= seq <= self.last_seq:
            raise ValueError(f"snapshot seq {seq} is not in the store (its last seq is {self.last_seq})")
        self._check_open()
        needed = sum(part_size(p) for p in parts.values())
        ensure_headroom(self.root, self.min_free_bytes, needed, "writing a snapshot")
        return self._snapshots.write(seq, parts)

    def snapshot_in_background(self, seq: int, parts: Mapping[str, SnapshotPart]) -> Future[Path]:
        """`write_snapshot` in the store's snapshot thread (one at a time, in order); the future holds
        the directory, or the error. `close()` waits for it."""
        if self._snapshot_thread is None:
            self._snapshot_thread = ThreadPoolExecutor(1, thread_name_prefix="margins-snapshot")
        return self._snapshot_thread.submit(self.write_snapshot, seq, parts)

    def latest_snapshot(self) -> Snapshot | None:
        """The newest snapshot that verifies and is not past the store's last seq (older ones are the
        fallback, each one passed over logged with the reason); None when there is none: replay all."""
        return self._snapshots.latest(self.last_seq)

    def newest_snapshot_written_at(self) -> float | None:
        """When the newest snapshot was written (Unix seconds), None without one; not verified."""
        return self._snapshots.newest_written_at()

    def size_bytes(self) -> dict[str, int]:
        """Bytes on disk by part -- "segments" (as the manifest lists them) and "log" (the write-ahead log
        files) -- from the manifest and a listing of the log directory: no file is read or hashed."""
        root = self.root
        segments = 0
        for segment in self._manifest.segments:  # one manifest object: the flusher replaces it whole
            if segment.size is not None:
                segments += segment.size
            else:  # a version-1 manifest does not record sizes
                with contextlib.suppress(OSError):
                    segments += (root / segment.file).stat().st_size
        log = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(root / "wal"):
                with contextlib.suppress(OSError):  # flushed and deleted meanwhile
                    log += entry.stat().st_size
        return {"segments": segments, "log": log}

    @property
    def manifest(self) -> Manifest:
        """The manifest of the segments written so far."""
        return self._manifest

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush what is pending, stop the flusher and release the store."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._snapshot_thread is not None:
            self._snapshot_thread.shutdown(wait=True)
        try:
            self.flush()
        finally:
            self._closed = True
            self._release()

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
            self._wal_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(str(self.root), "the store is closed")
        if isinstance(self._error, StoreError):
            raise StoreError(self._error.path, self._error.reason) from self._error
        if self._error is not None:
            raise StoreError(str(self.root), f"background flush failed: {self._error}") from self._error

    def __enter__(self) -> EventStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
