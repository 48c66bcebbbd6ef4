"""Reading the write-ahead log: `wal/<first seq>.jsonl`, one tagged JSON event per line.

A log file is named by the seq of its first line; line i holds seq `start + i`. `EventStore.append` writes
whole lines and fsyncs before it returns, so the only damage a crash can leave is a tail of the newest
log file that never returned from append (half a line, or bytes that are no event). Damage anywhere else
is not a crash: it is reported, never cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from budget.domain.events import Event, decode_event


@dataclass(slots=True)
class LogFile:
    """One log file as read: its lines after `after_seq` decoded, the first damaged line if any."""

    name: str  # relative to the store: wal/<start>.jsonl
    start: int
    size: int
    good: int = 0  # leading lines that are whole events (lines at or before after_seq are not decoded)
    good_bytes: int = 0  # the bytes of those lines
    bad_line: int | None = None  # index of the first whole line that is no event
    resumes: bool = False  # a whole event follows the bad line: damage in the middle, not a torn tail
    bodies: list[bytes] = field(default_factory=list)  # the good lines after after_seq, newline cut
    events: list[Event] = field(default_factory=list)  # the same, decoded
    first_body_seq: int = 0  # the seq of bodies[0]

    @property
    def end(self) -> int:
        """The seq of the last good line (start - 1 when there is none)."""
        return self.start + self.good - 1

    @property
    def damaged(self) -> bool:
        """Bytes after the good lines: half a line, or lines that are no event."""
        return self.size > self.good_bytes


def log_names(root: Path) -> list[str]:
    """The log files of the store, oldest first (relative paths)."""
    wal = root / "wal"
    if not wal.is_dir():
        return []
    named = [(int(p.stem), p.name) for p in wal.glob("*.jsonl") if p.stem.isdigit()]
    return [f"wal/{name}" for _, name in sorted(named)]


def read_log_file(
    root: Path, name: str, after_seq: int, *, decode: bool = True, data: bytes | None = None
) -> LogFile:
    """Read one log file (or its already read `data`), decoding the lines after `after_seq` -- or, with
    `decode` False, only counting its whole lines (what a reader checking coverage needs, quickly)."""
    if data is None:
        data = (root / name).read_bytes()
    start = int(Path(name).stem)
    log = LogFile(name=name, start=start, size=len(data))
    if not decode:
        log.good = data.count(b"\n")
        log.good_bytes = data.rfind(b"\n") + 1
        return log
    lines = data.split(b"\n")
    lines.pop()  # b"" after the last newline, or a torn tail that never got its newline
    offset = 0
    for index, line in enumerate(lines):
        seq = start + index
        if seq > after_seq:
            try:
                event = decode_event(line)
            except msgspec.DecodeError:
                log.bad_line = index
                log.resumes = _any_event(lines[index + 1 :])
                break
            if not log.bodies:
                log.first_body_seq = seq
            log.bodies.append(line)
            log.events.append(event)
        offset += len(line) + 1
        log.good += 1
    log.good_bytes = offset
    return log


def _any_event(lines: Sequence[bytes]) -> bool:
    for line in lines:
        try:
            decode_event(line)
        except msgspec.DecodeError:
            continue
        return True
    return False


def read_log(root: Path, after_seq: int) -> list[LogFile]:
    """Every log file of the store, oldest first, decoding the lines after `after_seq`."""
    return [read_log_file(root, name, after_seq) for name in log_names(root)]


def newest_written(files: Sequence[LogFile]) -> LogFile | None:
    """The newest log file with any bytes: the only one a crash can leave a torn tail in."""
    written = [f for f in files if f.size]
    return written[-1] if written else None


def log_damage(files: Sequence[LogFile]) -> tuple[list[str], LogFile | None]:
    """(problems, the file whose tail is torn): damage that a crash cannot explain is a problem; damage
    at the end of the newest written file is a torn tail (an append that never returned), cut on open."""
    newest = newest_written(files)
    problems = []
    torn = None
    for log in files:
        if not log.damaged:
            continue
        if log is newest and not log.resumes:
            torn = log
            continue
        where = f"line {log.good + 1}" if log.bad_line is not None else "its end"
        problems.append(f"{log.name}: {where} is not an event (damaged after the write returned)")
    return problems, torn


def log_runs(files: Sequence[LogFile]) -> list[tuple[int, int]]:
    """The seq ranges the good lines cover, merged where files continue one another."""
    runs: list[tuple[int, int]] = []
    for log in sorted(files, key=lambda f: f.start):
        if log.good == 0:
            continue
        if runs and log.start <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], max(runs[-1][1], log.end))
        else:
            runs.append((log.start, log.end))
    return runs


def covers(runs: Sequence[tuple[int, int]], first: int, last: int) -> bool:
    """Whether one run holds every seq first..last."""
    return any(start <= first and last <= end for start, end in runs)
