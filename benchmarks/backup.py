"""Backup benchmark: `margins store backup` of a 1M-event store, against a plain recursive copy.

The store is built as benchmarks/spend_query.py builds its stores (month-partitioned usage segments,
per-user rollups and the journal, written in chunks of 1M events; not timed). Each round times, in turn,
the backup (a consistent cut, every segment hashed and checked while copied, fsync'd, manifest last) and
two baselines over the same directory: `shutil.copytree` (what `cp -r` gives: an in-kernel copy, no cut, no
check, no fsync) and a copy through this process in 1 MiB chunks hashed with sha256 but never fsync'd (so
the backup's difference to it is mostly its fsyncs); the rounds interleave the three so the machine's load
falls on all alike. The page cache is warm
after the build for both (this machine cannot drop it): the figures are the copy's own cost, not a cold
disk's.

    uv run python -m benchmarks.backup [--events 1000000] [--months 12] [--rounds 5] [--dir PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.spend_query import build_store
from budget.store.backup import backup_store
from budget.store.check import check_store


def store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def hashed_copy(source: Path, dest: Path) -> None:
    """Every file copied through this process in 1 MiB chunks and hashed; nothing fsync'd."""
    for path in source.rglob("*"):
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with path.open("rb") as src, target.open("wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="work here (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        store = work / "store"
        started = time.monotonic()
        baseline_file = build_store(store, args.events, args.months, "2026-11")
        baseline_file.unlink()  # the query benchmark's single-file copy: not part of the store
        print(f"built {args.events} events in {time.monotonic() - started:.1f} s: {store_bytes(store)} bytes")
        backups, copies, hashed = [], [], []
        for index in range(args.rounds):
            dest = work / f"backup-{index}"
            report = backup_store(store, dest)
            backups.append(report.seconds)
            problems = check_store(dest).problems
            assert not problems, problems
            shutil.rmtree(dest)
            copy = work / f"copy-{index}"
            started = time.monotonic()
            shutil.copytree(store, copy)
            copies.append(time.monotonic() - started)
            shutil.rmtree(copy)
            started = time.monotonic()
            hashed_copy(store, copy)
            hashed.append(time.monotonic() - started)
            shutil.rmtree(copy)
        mb = report.bytes / 1e6
        backup_s, copy_s, hashed_s = (statistics.median(t) for t in (backups, copies, hashed))
        print(f"backup: {report.events} events, {report.segments} segments, {report.bytes} bytes")
        print(f"  margins store backup: median {backup_s:.3f} s ({mb / backup_s:.0f} MB/s), {_fmt(backups)}")
        print(f"  copytree (baseline):  median {copy_s:.3f} s ({mb / copy_s:.0f} MB/s), {_fmt(copies)}")
        print(
            f"  copy + sha256, no fsync: median {hashed_s:.3f} s ({mb / hashed_s:.0f} MB/s), {_fmt(hashed)}"
        )
        print("load average after: " + " ".join(f"{load:.2f}" for load in os.getloadavg()))


def _fmt(times: list[float]) -> str:
    return "runs " + " ".join(f"{t:.3f}" for t in times)


if __name__ == "__main__":
    main()
