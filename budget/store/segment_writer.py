"""Writing segments: a flushed batch -> its journal, usage and rollup segments; a run of segments -> one.

Plain functions of a store path and seq numbers, so the store can run them in a child process (`python -m
budget.store.segment_writer`, one JSON request and one JSON answer per line on its stdin / stdout):
building and writing Parquet then never holds the writing process's GIL, which its event loop needs to
answer authorizations in a millisecond. The child reads the batch from the write-ahead log files itself
(complete once the store has rotated to a new file), so nothing large crosses the process boundary. It
exits when its stdin closes, which is also what happens when the writing process dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from budget.errors import StoreError
from budget.store.manifest import Segment, segment_name
from budget.store.segments import (
    JOURNAL_SCHEMA,
    ROLLUP_SCHEMA,
    USAGE_SCHEMA,
    batch_tables,
    merge_rollups,
    merge_tables,
    rollup_table,
    write_table,
)

Written = tuple[Segment, list[Segment], list[Segment]]  # journal, usage per month, rollup per month


def read_log(wal_files: Sequence[str], first: int, last: int) -> list[bytes]:
    """The log lines of seqs first..last from the store's log files (each named by its first seq)."""
    bodies: list[bytes] = []
    for path in sorted(wal_files):
        start = int(Path(path).stem)
        if start > last:
            continue
        lines = Path(path).read_bytes().split(b"\n")
        lines.pop()  # b"" after the last newline, or a torn tail that never returned from append
        bodies += lines[max(0, first - start) : max(0, last + 1 - start)]
    if len(bodies) != last - first + 1:
        where = str(Path(wal_files[0]).parent.parent) if wal_files else "?"
        raise StoreError(where, f"the log lacks seqs {first}..{last}")
    return bodies


def write_batch(
    root: str, first: int, last: int, bodies: Sequence[bytes] | None, wal_files: Sequence[str]
) -> Written:
    """Write the segments of seqs first..last (from `bodies`, or read from `wal_files`); the caller commits
    them to the manifest."""
    if bodies is None:
        bodies = read_log(wal_files, first, last)
    base = Path(root)
    name = segment_name(first, last)
    journal_rows, usage_by_month = batch_tables(bodies, first)
    usage: list[Segment] = []
    rollup: list[Segment] = []
    for month, table in sorted(usage_by_month.items()):
        usage.append(write_segment(base, f"usage/month={month}/{name}", table, first, last, month))
        summed = rollup_table(table)
        rollup.append(write_segment(base, f"rollup/month={month}/{name}", summed, first, last, month))
    journal = write_segment(base, f"journal/{name}", journal_rows, first, last, None)
    return journal, usage, rollup


def write_segment(
    root: Path, file: str, table: pa.Table, first: int, last: int, month: str | None
) -> Segment:
    """Write one segment file and describe it for the manifest (rows, size, sha256)."""
    sha256, size = write_table(root / file, table)
    return Segment(
        file=file, first=first, last=last, rows=table.num_rows, month=month, size=size, sha256=sha256
    )


def merge_run(root: str, kind: str, month: str | None, run: Sequence[Segment]) -> Segment:
    """Write one segment holding a run of segments of one kind ("journal", "usage" or "rollup", whose
    rows are summed again); the caller swaps it into the manifest."""
    first, last = run[0].first, run[-1].last
    name = segment_name(first, last)
    file = f"{kind}/{name}" if month is None else f"{kind}/month={month}/{name}"
    schema = {"journal": JOURNAL_SCHEMA, "usage": USAGE_SCHEMA, "rollup": ROLLUP_SCHEMA}[kind]
    table = merge_tables(Path(root), run, schema)
    if kind == "rollup":
        table = merge_rollups(table)
    return write_segment(Path(root), file, table, first, last, month)


class SegmentWriter:
    """The parent's handle on the child process; `call` returns None once the child is gone, and the
    store then writes segments itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "budget.store.segment_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C for the enforcer is not for the process it flushes with
        )

    def write_batch(self, root: str, first: int, last: int, wal_files: Sequence[str]) -> Written | None:
        """write_batch in the child, reading the batch from the log files."""
        answer = self._call(
            {"job": "write_batch", "root": root, "first": first, "last": last, "wal": list(wal_files)}
        )
        if answer is None:
            return None
        return (
            Segment(**answer["journal"]),
            [Segment(**s) for s in answer["usage"]],
            [Segment(**s) for s in answer["rollup"]],
        )

    def merge_run(self, root: str, kind: str, month: str | None, run: Sequence[Segment]) -> Segment | None:
        """merge_run in the child."""
        request = {
            "job": "merge_run",
            "root": root,
            "kind": kind,
            "month": month,
            "run": [asdict(s) for s in run],
        }
        answer = self._call(request)
        return None if answer is None else Segment(**answer)

    def _call(self, request: dict[str, Any]) -> Any:
        with self._lock:
            child = self._child
            if child is None or child.stdin is None or child.stdout is None:
                return None
            try:
                child.stdin.write(json.dumps(request).encode() + b"\n")
                child.stdin.flush()
                line = child.stdout.readline()  # blocks this thread only, without the GIL
            except (BrokenPipeError, OSError):
                line = b""
            if not line:
                self._child = None  # gone: the caller writes in-process from now on
                return None
            answer = json.loads(line)
            if "store_error" in answer:  # a damaged input or the like: the child's own words
                raise StoreError(request.get("root", "?"), answer["store_error"])
            if "error" in answer:
                raise StoreError(request.get("root", "?"), f"segment writer: {answer['error']}")
            return answer["ok"]

    def close(self) -> None:
        """End the child (it finishes the job in hand first)."""
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=60)
            if child.stdout is not None:
                child.stdout.close()


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    for line in requests:
        request = json.loads(line)
        try:
            if request["job"] == "write_batch":
                journal, usage, rollup = write_batch(
                    request["root"], request["first"], request["last"], None, request["wal"]
                )
                result: Any = {
                    "journal": asdict(journal),
                    "usage": [asdict(s) for s in usage],
                    "rollup": [asdict(s) for s in rollup],
                }
            else:
                run = [Segment(**s) for s in request["run"]]
                result = asdict(merge_run(request["root"], request["kind"], request["month"], run))
            answer: dict[str, Any] = {"ok": result}
        except StoreError as error:
            answer = {"store_error": error.reason}
        except Exception as error:  # reported to the store, which raises it as a StoreError
            answer = {"error": f"{type(error).__name__}: {error}"}
        try:
            answers.write(json.dumps(answer).encode() + b"\n")
            answers.flush()
        except BrokenPipeError:
            return  # the store's process is gone; what was written is an orphan it removes on open


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(sys.stdin.buffer, os.fdopen(os.dup(sys.stdout.fileno()), "wb"))
