"""`margins store check`: everything a store's files can be checked for, read-only.

The manifest (readable, its journal holding seqs 0..last_seq once each), every listed segment (size,
sha256, Parquet row count; a journal segment's seq column), the files it does not list (what the writer
will do with each on open), the log (every line an event, continuing the manifest without a gap), the
ledger snapshots (checksums) and the quarantine. Safe beside a running writer: a flush that moves the
manifest on while the check looks is looked at again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from budget.errors import StoreError
from budget.store.headroom import MIB
from budget.store.integrity import parquet_rows, segment_problem
from budget.store.manifest import MANIFEST, Manifest, Segment, read_manifest_or_none
from budget.store.recovery import QUARANTINE, SURVEY_ATTEMPTS, Survey, survey
from budget.store.snapshots import Snapshots


@dataclass(slots=True)
class CheckReport:
    """What was checked (one line each) and what is wrong (one line each)."""

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_store(root: Path) -> CheckReport:
    """Check the store at `root`; raises StoreError only when it is no store at all."""
    report = CheckReport()
    try:
        found = _settled(root)
    except StoreError as error:
        if not root.is_dir() or "not a margins event store" in error.reason:
            raise
        report.problems.append(error.reason)  # an unreadable manifest: nothing else can be judged
        return report
    manifest = found.manifest
    _check_manifest(found, report)
    _check_segments(root, manifest, report)
    _check_unlisted(found, report)
    _check_log(found, report)
    last_seq = manifest.last_seq + sum(len(f.bodies) for f in found.log)
    checked, problems = Snapshots(root).problems(last_seq)
    if checked:
        report.checked.append(f"snapshots: {len(checked)} verified: {', '.join(checked)}")
    report.problems += problems
    kept = root / QUARANTINE
    quarantined = [p for p in kept.rglob("*") if p.is_file()] if kept.is_dir() else []
    if quarantined:
        report.checked.append(
            f"{QUARANTINE}/: {_count(len(quarantined), 'file')} kept for inspection (nothing reads them; "
            "delete them once looked at)"
        )
    return report


def _settled(root: Path) -> Survey:
    for _ in range(SURVEY_ATTEMPTS):
        found = survey(root, decode_log=True)
        if not found.problems:
            break
        if read_manifest_or_none(root) == (None if found.manifest_missing else found.manifest):
            break
    return found


def _check_manifest(found: Survey, report: CheckReport) -> None:
    manifest = found.manifest
    if found.manifest_missing:
        report.checked.append(f"{MANIFEST}: none yet")
    else:
        report.checked.append(
            f"{MANIFEST}: version {manifest.version}, seqs 0..{manifest.last_seq} in "
            f"{_count(len(manifest.journal), 'journal segment')}; {len(manifest.usage)} usage and "
            f"{_count(len(manifest.rollup), 'rollup segment')}"
        )
    report.problems += found.problems


def _check_segments(root: Path, manifest: Manifest, report: CheckReport) -> None:
    segments = manifest.segments
    if not segments:
        return
    with ThreadPoolExecutor(max_workers=4) as pool:
        problems = list(pool.map(lambda s: _segment_problem(root, s), segments))
    report.problems += [p for p in problems if p is not None]
    size = sum(s.size or 0 for s in segments)
    how = (
        "size, sha256 and row count"
        if manifest.version >= 2
        else "row count (no checksums until the writer adds them)"
    )
    report.checked.append(f"segments: {_count(len(segments), 'file')}, {_size(size)}: {how} of each")
    if manifest.retired:
        waiting = _count(len(manifest.retired), "replaced file")
        report.checked.append(f"{waiting} wait out the readers' grace period before they go")


def _segment_problem(root: Path, segment: Segment) -> str | None:
    try:
        data = (root / segment.file).read_bytes()
    except OSError:
        return segment_problem(root, segment)  # says missing or unreadable
    problem = segment_problem(root, segment, data)
    if problem is not None:
        return problem
    rows = parquet_rows(data)
    if rows != segment.rows:
        return f"{segment.file}: {rows} rows, {MANIFEST} says {segment.rows}"
    if segment.file.startswith("journal/"):
        try:
            seq = pq.read_table(pa.BufferReader(data), columns=["seq"]).column("seq").to_numpy()
        except (pa.ArrowException, OSError, ValueError) as error:
            return f"{segment.file} is damaged: {error}"
        if not np.array_equal(seq, np.arange(segment.first, segment.last + 1)):
            return f"{segment.file} does not hold seqs {segment.first}..{segment.last} in order"
    return None


def _check_unlisted(found: Survey, report: CheckReport) -> None:
    for item in found.unlisted:
        if item.verdict == "quarantine":
            report.problems.append(
                f"{item.file} is not in {MANIFEST} and {item.reason} (the writer moves it to {QUARANTINE}/)"
            )
        else:
            report.checked.append(
                f"{item.file}: {item.reason} (the writer removes it when it opens the store)"
            )


def _check_log(found: Survey, report: CheckReport) -> None:
    files = _count(len(found.log), "file")
    events = _count(sum(len(f.bodies) for f in found.log), "event")
    report.checked.append(f"log: {files}, {events} after seq {found.manifest.last_seq}, each an event")
    if found.torn is not None:
        report.checked.append(
            f"{found.torn.name}: ends in a torn line, an append that never returned (the writer cuts it)"
        )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _size(count: int) -> str:
    return f"{count / MIB:,.1f} MiB" if count >= MIB else f"{count / 1024:,.1f} KiB"
