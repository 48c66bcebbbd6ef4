"""The durable event store: one writing process appends, any process queries the Parquet segments.

`append(events)` writes the batch to an fsync'd write-ahead log and returns only once it is durable, so the
enforcer may acknowledge the messages behind it. About once a second (and on `flush()` / `close()`) the
pending events become immutable Parquet segments (see budget/store/segments.py) that DuckDB reads in
place from other processes, and the log they came from is deleted. Small segments are compacted in the
background.

Why not write DuckDB tables directly: DuckDB admits one writing process per database file and a reader
cannot open a file another process is writing; immutable files listed by an atomically replaced manifest
give readers a consistent snapshot with no lock at all, and the layout works on object storage too.

Opening a store recovers it: a segment the manifest does not list is an interrupted flush and is deleted;
log lines past the manifest's last seq are the events appended since, and a torn last line (a write that
never returned) is cut off.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import msgspec

from budget.domain.events import Event, decode_event
from budget.errors import StoreError
from budget.store.manifest import Manifest, Segment, fsync_dir, read_manifest, write_atomic
from budget.store.segment_writer import SegmentWriter, merge_run, write_batch
from budget.store.segments import decode_bodies, read_journal_bodies

FLUSH_INTERVAL_S = 1.0
RETIRE_GRACE_S = 60.0  # a reader holding an older manifest finishes its query well within this
COMPACT_MIN_SEGMENTS = 8  # merge once this many small segments have piled up
COMPACT_MAX_ROWS = 2_000_000  # a segment this large is left alone
REPLAY_BATCH = 50_000

_encoder = msgspec.json.Encoder()


class EventStore:
    """A directory of events: durable append, replay in append order, Parquet segments for queries.

    Use `EventStore.open(path)` (a context manager). Only one process may hold a store open for writing;
    readers use budget.store.queries and never open an EventStore.
    """

    def __init__(self, root: Path, flush_interval: float | None) -> None:
        self.root = root
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

    @classmethod
    def open(
        cls, path: str | Path, *, flush_interval: float | None = FLUSH_INTERVAL_S, offload: bool | None = None
    ) -> EventStore:
        """Open (creating if needed) and recover the store at `path`; raises StoreError when another
        process holds it. `flush_interval` None disables the background flusher (call `flush()`).

        `offload` builds and writes segments in a child process so this process's GIL stays with its own
        work (default: when the background flusher runs)."""
        root = Path(path)
        store = cls(root, flush_interval)
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
            raise StoreError(str(self.root), "another process has this store open for writing") from None
        self._manifest = read_manifest(self.root)
        self._remove_orphans()
        self._next_seq = self._manifest.last_seq + 1
        self._recover_wal()
        self._start_wal()
        self.flush()

    def _remove_orphans(self) -> None:
        manifest = self._manifest
        listed = {s.file for s in (*manifest.journal, *manifest.usage, *manifest.rollup)}
        listed |= {f for f, _ in manifest.retired}
        for sub in ("journal", "usage", "rollup"):
            for file in (self.root / sub).rglob("*.parquet*") if (self.root / sub).exists() else []:
                if str(file.relative_to(self.root)) not in listed:
                    file.unlink()

    def _recover_wal(self) -> None:
        """Move log lines past the manifest into the pending batch; cut a torn last line."""
        for wal in sorted((self.root / "wal").glob("*.jsonl")):
            seq = int(wal.stem)
            data = wal.read_bytes()
            good = 0
            for line in data.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break  # torn: its append never returned
                try:
                    event = decode_event(line)
                except msgspec.DecodeError:
                    break
                good += len(line)
                if seq >= self._next_seq:
                    self._pending.append(event)
                    self._pending_bodies.append(line.rstrip(b"\n"))
                    self._next_seq = seq + 1
                seq += 1
            if good < len(data):
                os.truncate(wal, good)

    def _start_wal(self) -> None:
        """Begin a new log file named by the next seq (the previous ones go once flushed)."""
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
        self._wal_path = self.root / "wal" / f"{self._next_seq:016d}.jsonl"
        self._wal_fd = os.open(self._wal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fsync_dir(self._wal_path.parent)

    # -- writing ----------------------------------------------------------------------------------

    def append(self, events: Iterable[Event]) -> None:
        """Append a batch durably: returns only once every event is fsync'd to the log."""
        batch = list(events)
        if not batch:
            return
        bodies = [_encoder.encode(e) for e in batch]
        data = b"\n".join(bodies) + b"\n"
        with self._lock:
            self._check_open()
            written = 0
            while written < len(data):
                written += os.write(self._wal_fd, data[written:])
            os.fdatasync(self._wal_fd)
            self._pending.extend(batch)
            self._pending_bodies.extend(bodies)
            self._next_seq += len(batch)

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

    def replay(self) -> Iterator[Event]:
        """Every event in append order: the segments, then what is still pending."""
        with self._flush_lock, self._lock:  # one consistent cut: no flush moves events in between
            segments = list(self._manifest.journal)
            pending = list(self._pending)
        self._replaying += 1
        try:
            for segment in segments:
                bodies = read_journal_bodies(self.root, segment)
                for start in range(0, len(bodies), REPLAY_BATCH):
                    yield from decode_bodies(bodies[start : start + REPLAY_BATCH])
        finally:
            self._replaying -= 1
        yield from pending

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
        if self._error is not None:
            raise StoreError(str(self.root), f"background flush failed: {self._error}") from self._error

    def __enter__(self) -> EventStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
