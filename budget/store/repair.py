"""`margins store repair`: rebuild a store's manifest, usage and rollup from its journal and its log.

The journal is the source of truth. Repair looks for every copy of each seq: the journal segments on
disk (listed or not -- a stale manifest's missing flushes, an interrupted compaction's output, the files
a compaction replaced), those in quarantine/, and the log. A listed segment whose sha256 matches is used
as it is; any other file only once it reads as Parquet, holds exactly the seqs its name says, and every
body decodes as an event. From these it picks a journal that holds seqs 0..N once each (`plan_journal`,
pure), preferring whole, verified files; the usage and rollup segments are then rebuilt from it and a new
manifest (version 2, every checksum) is committed.

Nothing it cannot prove redundant is deleted: journal files it does not use go to quarantine/; the usage
and rollup files it replaced are listed as retired, so the writer deletes them after the readers' grace
period, as it does after a compaction. If some seqs are in no file and not in the log, repair changes
nothing and says which seqs are missing. It refuses while a writer holds the store.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from budget.domain.events import decode_event
from budget.errors import SnapshotDamaged, StoreError
from budget.store.integrity import file_digest, segment_problem
from budget.store.journal_plan import LOG, Piece, Source, plan_journal
from budget.store.manifest import (
    MANIFEST,
    Manifest,
    Segment,
    parse_segment_path,
    read_manifest_or_none,
    segment_files,
    segment_name,
    write_atomic,
)
from budget.store.recovery import QUARANTINE, keep_copy, quarantine
from budget.store.segment_writer import write_segment
from budget.store.segments import REPLAY_BATCH, batch_tables, decode_bodies, rollup_table
from budget.store.snapshots import SNAPSHOTS, Snapshots
from budget.store.wal import log_names


@dataclass(slots=True)
class RepairReport:
    """What repair did (or, dry, would do), one line each."""

    lines: list[str] = field(default_factory=list)


def repair_store(
    root: Path, *, dry_run: bool = False, say: Callable[[str], None] | None = None
) -> RepairReport:
    """Rebuild the store at `root` (see the module docstring); StoreError when a writer holds it or when
    seqs are missing from every copy."""
    if not root.is_dir() or not ((root / "wal").is_dir() or (root / MANIFEST).exists()):
        raise StoreError(str(root), "not a margins event store (no manifest.json, no wal/)")
    lock = os.open(root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                str(root), "a writer (margins enforce) has this store open: stop it, then repair"
            ) from None
        return _Repair(root, dry_run, say or (lambda line: None)).run()
    finally:
        os.close(lock)


class _Repair:
    def __init__(self, root: Path, dry_run: bool, say: Callable[[str], None]) -> None:
        self.root = root
        self.dry_run = dry_run
        self.report = RepairReport()
        self._say = say
        try:
            self.old = read_manifest_or_none(root)
        except StoreError as error:
            self.say(f"{MANIFEST} cannot be used ({error.reason}): rebuilt from the files")
            self.old = None

    def say(self, line: str) -> None:
        self.report.lines.append(line)
        self._say(line)

    def run(self) -> RepairReport:
        sources, unusable = self._journal_sources()
        logs = [_read_log_lines(self.root, name) for name in log_names(self.root)]
        sources += [run for log in logs for run in log.runs]
        pieces, missing = plan_journal(sources)
        end = pieces[-1].last if pieces else -1
        claimed = max([self.old.last_seq if self.old else -1, *(log.start - 1 for log in logs)])
        if missing is None and claimed > end:
            missing = (end + 1, claimed)
        if missing is not None:
            first, last = missing
            raise StoreError(
                str(self.root),
                f"seqs {first}..{last} are in no journal file and not in the log: nothing was changed; "
                "restore the journal segment holding them from a backup, then repair again",
            )
        self.say(f"journal: seqs 0..{end} from {len(pieces)} pieces ({_describe(pieces)})")
        for file, reason in unusable:
            self.say(f"{file}: not used ({reason})")
        if self.dry_run:
            self.say("dry run: nothing written")
            return self.report
        journal = [self._place(piece) for piece in pieces]
        usage, rollup = self._rebuild_usage(journal)
        retired, moved = self._dispose(journal, usage, rollup, end)
        if (self.root / MANIFEST).exists():  # kept for a look at what it said
            kept = keep_copy(self.root, MANIFEST)
            self.say(f"{MANIFEST}: the old one copied to {kept.relative_to(self.root)}")
        write_atomic(self.root / MANIFEST, Manifest(end, journal, usage, rollup, retired).to_json())
        self.say(
            f"{MANIFEST}: written (version 2): {len(journal)} journal, {len(usage)} usage and "
            f"{len(rollup)} rollup segments, each with its sha256"
        )
        for file in moved:
            target = quarantine(self.root, file)
            self.say(f"{file}: moved to {target.relative_to(self.root)}")
        self._clear_log(logs, end)
        self._check_snapshots(end)
        return self.report

    # -- finding the copies -------------------------------------------------------------------------

    def _journal_sources(self) -> tuple[list[Source], list[tuple[str, str]]]:
        listed = {s.file: s for s in self.old.journal} if self.old is not None else {}
        files = [f for f in segment_files(self.root) if f.startswith("journal/") and not f.endswith(".tmp")]
        base = self.root / QUARANTINE / "journal"
        if base.is_dir():
            files += sorted(str(p.relative_to(self.root)) for p in base.glob("*.parquet*") if p.is_file())
        sources, unusable = [], []
        for file in files:
            name = parse_segment_path(re.sub(r"\.\d+$", "", file.removeprefix(f"{QUARANTINE}/")))
            if name is None or name.kind != "journal":
                unusable.append((file, "not a journal segment name"))
                continue
            segment = listed.get(file)
            intact = segment is not None and segment.sha256 is not None
            if segment is not None and intact and segment_problem(self.root, segment) is None:
                sources.append(Source(name.first, name.last, file, verified=True, segment=segment))
                continue
            problem = _journal_problem(self.root / file, name.first, name.last)
            if problem is None:
                sources.append(Source(name.first, name.last, file))
            else:
                unusable.append((file, problem))
        return sources, unusable

    # -- writing the new journal, usage and rollup --------------------------------------------------

    def _place(self, piece: Piece) -> Segment:
        """The journal segment of a piece: a verified file as it is, another whole file where it
        belongs (hashed), or a new file from log lines or part of a file."""
        source = piece.source
        target = f"journal/{segment_name(piece.first, piece.last)}"
        if piece.whole and source.segment is not None and source.file == target:
            return source.segment
        if piece.whole and source.file == target:
            return _described(self.root, target, piece)
        if (self.root / target).exists():
            moved = quarantine(self.root, target)  # not the copy chosen: keep it, out of the way
            self.say(f"{target}: moved to {moved.relative_to(self.root)} (another copy is used)")
        if piece.whole:
            os.replace(self.root / source.file, self.root / target)
            self.say(f"{source.file}: restored as {target}")
            return _described(self.root, target, piece)
        part = slice(piece.first - source.first, piece.last + 1 - source.first)
        if source.file == LOG:
            bodies = list(source.bodies[part])
        else:
            bodies = [body.encode() for body in _bodies(self.root / source.file, part)]
        journal_rows, _ = batch_tables(bodies, piece.first)
        self.say(f"{target}: written from {'the log' if source.file == LOG else source.file}")
        return write_segment(self.root, target, journal_rows, piece.first, piece.last, None)

    def _rebuild_usage(self, journal: Sequence[Segment]) -> tuple[list[Segment], list[Segment]]:
        usage: list[Segment] = []
        rollup: list[Segment] = []
        for segment in journal:
            by_month = _usage_by_month(self.root / segment.file, segment.first)
            name = segment_name(segment.first, segment.last)
            seqs = (segment.first, segment.last)
            for month, table in sorted(by_month.items()):
                usage.append(write_segment(self.root, f"usage/month={month}/{name}", table, *seqs, month))
                summed = rollup_table(table)
                rollup.append(write_segment(self.root, f"rollup/month={month}/{name}", summed, *seqs, month))
        self.say(f"usage and rollup: {len(usage)} + {len(rollup)} segments rebuilt from the journal")
        key = lambda s: (s.first, s.month or "")  # noqa: E731
        return sorted(usage, key=key), sorted(rollup, key=key)

    # -- what becomes of the old files --------------------------------------------------------------

    def _dispose(
        self, journal: list[Segment], usage: list[Segment], rollup: list[Segment], end: int
    ) -> tuple[list[tuple[str, float]], list[str]]:
        """(retired, to quarantine): replaced usage and rollup files inside the journal's range are
        derived data, retired for the writer to delete after the grace period; the rest is kept."""
        kept = {s.file for s in (*journal, *usage, *rollup)}
        old_retired = dict(self.old.retired) if self.old is not None else {}
        now = time.time()
        retired: list[tuple[str, float]] = []
        moved: list[str] = []
        for file in segment_files(self.root):
            if file in kept:
                continue
            if file.endswith(".tmp"):
                (self.root / file).unlink(missing_ok=True)  # never renamed into place: no one's copy
                continue
            name = parse_segment_path(file)
            if file in old_retired:
                retired.append((file, old_retired[file]))
            elif name is not None and name.kind != "journal" and name.last <= end:
                retired.append((file, now))
            else:
                moved.append(file)
        return retired, moved

    def _clear_log(self, logs: Sequence[_LogLines], end: int) -> None:
        """Every event of the log is in the journal now: the log files go, except one damaged where a
        crash cannot explain it (kept aside). A torn tail never returned from append: it goes too."""
        removed = 0
        newest = max((log for log in logs if log.size), key=lambda log: log.start, default=None)
        for log in logs:
            if log.bad_lines and (log is not newest or log.resumes):
                moved = quarantine(self.root, log.name)
                self.say(f"{log.name}: damaged, moved to {moved.relative_to(self.root)}")
            else:
                (self.root / log.name).unlink(missing_ok=True)
                removed += 1
        if removed:
            self.say(
                f"log: {removed} file{'' if removed == 1 else 's'} removed (its events are in the journal)"
            )

    def _check_snapshots(self, end: int) -> None:
        snapshots = Snapshots(self.root)
        for seq in snapshots.seqs():
            try:
                snapshots.load(snapshots.path(seq))
                if seq <= end:
                    continue
                reason = f"past the last seq {end}"
            except SnapshotDamaged as error:
                reason = error.reason
            moved = quarantine(self.root, f"{SNAPSHOTS}/{seq:016d}")
            self.say(f"{SNAPSHOTS}/{seq:016d}: {reason}; moved to {moved.relative_to(self.root)}")


@dataclass(slots=True)
class _LogLines:
    """A log file read line by line: the runs of lines that are events, and the lines that are not."""

    name: str
    start: int
    size: int
    runs: list[Source] = field(default_factory=list)
    bad_lines: int = 0
    resumes: bool = False  # an event follows a bad line


def _read_log_lines(root: Path, name: str) -> _LogLines:
    data = (root / name).read_bytes()
    log = _LogLines(name=name, start=int(Path(name).stem), size=len(data))
    lines = data.split(b"\n")
    lines.pop()  # b"" after the last newline, or a torn tail that never got its newline
    run: list[bytes] = []
    for index, line in enumerate(lines):
        try:
            decode_event(line)
        except msgspec.DecodeError:
            log.bad_lines += 1
            if run:
                log.runs.append(_log_source(log.start + index - len(run), run))
                run = []
            continue
        log.resumes = log.resumes or log.bad_lines > 0
        run.append(line)
    if run:
        log.runs.append(_log_source(log.start + len(lines) - len(run), run))
    return log


def _log_source(first: int, lines: list[bytes]) -> Source:
    return Source(first, first + len(lines) - 1, LOG, bodies=tuple(lines))


def _journal_problem(path: Path, first: int, last: int) -> str | None:
    """Why an unlisted journal file cannot be trusted (None: it holds seqs first..last, all events)."""
    try:
        seqs = pq.read_table(path, columns=["seq"]).column("seq").to_numpy()
        if not np.array_equal(seqs, np.arange(first, last + 1)):
            return f"does not hold seqs {first}..{last} in order"
        for batch in pq.ParquetFile(path).iter_batches(batch_size=REPLAY_BATCH, columns=["body"]):
            decode_bodies(batch.column(0).to_pylist())
    except (msgspec.DecodeError, TypeError) as error:  # before ValueError: a DecodeError is one
        return f"a body is not an event: {error}"
    except (pa.ArrowException, OSError, ValueError) as error:
        return f"not readable Parquet: {str(error).splitlines()[0]}"
    return None


def _bodies(path: Path, part: slice) -> list[str]:
    column = pq.read_table(path, columns=["body"]).column("body")
    bodies: list[str] = column.slice(part.start, part.stop - part.start).to_pylist()
    return bodies


def _usage_by_month(path: Path, first: int) -> dict[str, pa.Table]:
    """A journal segment's usage rows per month, parsed a bounded number of bodies at a time (a
    segment of 2M events parsed at once would take gigabytes)."""
    parts: dict[str, list[pa.Table]] = {}
    seq = first
    for batch in pq.ParquetFile(path).iter_batches(batch_size=REPLAY_BATCH, columns=["body"]):
        bodies = [body.encode() for body in batch.column(0).to_pylist()]
        for month, table in batch_tables(bodies, seq)[1].items():
            parts.setdefault(month, []).append(table)
        seq += len(bodies)
    return {month: pa.concat_tables(tables) for month, tables in parts.items()}


def _described(root: Path, file: str, piece: Piece) -> Segment:
    sha256, size = file_digest(root / file)
    return Segment(file, piece.first, piece.last, piece.last - piece.first + 1, None, size, sha256)


def _describe(pieces: Sequence[Piece]) -> str:
    kept = sum(1 for p in pieces if p.whole and p.source.file.startswith("journal/"))
    restored = sum(1 for p in pieces if p.whole and not p.source.file.startswith("journal/"))
    written = len(pieces) - kept - restored
    return f"{kept} kept, {restored} from {QUARANTINE}/, {written} written from the log or a part of a file"
