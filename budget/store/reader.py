"""Reading a store's events without its writer's lock: replay and a month's usage, beside a running
enforcer (`margins fit --store`).

A `StoreReader` takes one consistent cut when it opens: the manifest, open file handles on the journal
segments it lists (a compaction may retire them, but an open file stays readable after it is deleted),
and the log lines past the manifest's last seq. It sees every event the writer had appended by then, in
append order, and nothing half-written: a line without its newline is an append in progress. The journal
segments are checked against the manifest as they are read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from budget.domain.events import Event, UsageRecorded
from budget.store.integrity import damaged, segment_problem
from budget.store.manifest import Manifest, Segment, read_manifest_or_none, segment_files
from budget.store.recovery import SURVEY_ATTEMPTS, assess, no_cut
from budget.store.segments import decode_segment, event_month, journal_bodies
from budget.store.wal import LogFile, log_names, read_log_file


class StoreReader:
    """A read-only cut of a store: its events up to `last_seq`, read without the writer's lock."""

    def __init__(
        self, root: Path, manifest: Manifest, journal: list[tuple[Segment, int]], log: list[LogFile]
    ) -> None:
        self.root = root
        self.manifest = manifest
        self._journal = journal  # (segment, open file descriptor)
        self._log = log
        self.last_seq = manifest.last_seq + sum(len(f.bodies) for f in log)

    @classmethod
    def open(cls, path: str | Path) -> StoreReader:
        """Take the cut; StoreError when `path` is no store, or its manifest is missing or stale."""
        root = Path(path)
        for _ in range(SURVEY_ATTEMPTS):
            cut = _take_cut(root)
            if cut is not None:
                return cut
        raise no_cut(root, "reader")

    def replay(self, after_seq: int = -1) -> Iterator[Event]:
        """The events after `after_seq` (default: all) in append order."""
        for segment, fd in self._journal:
            if segment.last <= after_seq:
                continue
            for bodies in journal_bodies(self.root, segment, self._verified(segment, fd), after_seq):
                yield from decode_segment(self.root, segment, bodies)
        for log in self._log:
            skip = max(0, after_seq + 1 - log.first_body_seq)
            yield from log.events[skip:]

    def usage(self, month: str) -> list[UsageRecorded]:
        """The usage events filed under `month` (YYYY-MM): those whose own month it is, or, without a
        month of their own, whose UTC timestamp falls in it. Decodes only the matching journal rows."""
        found: list[UsageRecorded] = []
        for segment, fd in self._journal:
            table = self._read(segment, fd, ["type", "month", "body"])
            keep = pc.and_(
                pc.equal(table.column("type"), "usage_recorded"), pc.equal(table.column("month"), month)
            )
            bodies = table.filter(keep).column("body").to_pylist()
            found += [e for e in decode_segment(self.root, segment, bodies) if isinstance(e, UsageRecorded)]
        for log in self._log:
            found += [e for e in log.events if isinstance(e, UsageRecorded) and event_month(e) == month]
        return found

    def _verified(self, segment: Segment, fd: int) -> bytes:
        data = _read_all(fd)
        problem = segment_problem(self.root, segment, data)
        if problem is not None:
            raise damaged(self.root, problem)
        return data

    def _read(self, segment: Segment, fd: int, columns: list[str]) -> pa.Table:
        data = self._verified(segment, fd)
        try:
            return pq.read_table(pa.BufferReader(data), columns=columns)
        except (pa.ArrowException, OSError, ValueError) as error:
            raise damaged(self.root, f"{segment.file} is damaged: {str(error).splitlines()[0]}") from error

    def close(self) -> None:
        """Release the journal files."""
        for _, fd in self._journal:
            os.close(fd)
        self._journal = []

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def read_usage(path: str | Path, month: str) -> list[UsageRecorded]:
    """The usage events of `month` in the store at `path`, read beside a running writer."""
    with StoreReader.open(path) as reader:
        return reader.usage(month)


def _take_cut(root: Path) -> StoreReader | None:
    """One attempt at a consistent cut; None when the writer moved on meanwhile (look again)."""
    found = read_manifest_or_none(root)
    manifest = Manifest() if found is None else found
    opened: list[tuple[Segment, int]] = []
    try:
        for segment in manifest.journal:
            opened.append((segment, os.open(root / segment.file, os.O_RDONLY)))
        logs = []
        for name in log_names(root):
            try:
                data = (root / name).read_bytes()
            except FileNotFoundError:
                continue  # flushed and removed since it was listed
            logs.append(read_log_file(root, name, manifest.last_seq, data=data))
    except FileNotFoundError:
        _close(opened)
        return None  # a listed file went: the manifest moved on
    # The newest log file's torn tail is an append in progress: the cut ends before it.
    if assess(manifest, found is None, segment_files(root), logs).problems:
        _close(opened)
        return None
    return StoreReader(root, manifest, opened, [f for f in logs if f.bodies])


def _close(opened: list[tuple[Segment, int]]) -> None:
    for _, fd in opened:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
