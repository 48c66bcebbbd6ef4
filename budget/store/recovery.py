"""Do the store's files add up? The manifest, the segments on disk and the log, compared.

`survey` reads what is there; `assess` (pure) says what it means:

- problems: a missing or stale manifest (journal segments past its last seq that the log no longer
  holds, a log that does not continue where the manifest ends), a manifest whose journal skips seqs, a
  log damaged where a crash cannot explain it. Nobody may write or trust such a store: the writer and
  the readers refuse, naming the file and `margins store repair`.
- unlisted files, each with a verdict: an unfinished write (`.tmp`), an interrupted flush (the log still
  holds every event of its seq range), an interrupted compaction or deletion (listed segments of the same
  kind and month hold its whole seq range: redundant once they verify), or none of these -- moved to
  quarantine/ by the writer, never deleted.

`apply_recovery` is what the writer does about the verdicts on open.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from budget.errors import StoreError
from budget.store.integrity import segment_problem
from budget.store.manifest import (
    MANIFEST,
    Manifest,
    Segment,
    fsync_dir,
    parse_segment_path,
    read_manifest_or_none,
    repair_hint,
    segment_files,
)
from budget.store.wal import LogFile, covers, log_damage, log_names, log_runs, read_log_file

log = logging.getLogger("margins.store")

QUARANTINE = "quarantine"
SURVEY_ATTEMPTS = 5  # a writer commits about once a second: a reader that raced it looks again

Verdict = Literal["unfinished", "flushed", "covered", "quarantine"]


@dataclass(frozen=True, slots=True)
class Unlisted:
    """A segment file the manifest does not list, and what it is."""

    file: str
    verdict: Verdict
    reason: str
    containers: tuple[Segment, ...] = ()  # "covered": the listed segments that hold its events


@dataclass(slots=True)
class Survey:
    """The store as found: its manifest, the files it does not list, its log, what does not add up."""

    manifest: Manifest
    manifest_missing: bool
    log: list[LogFile]
    unlisted: list[Unlisted] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    torn: LogFile | None = None  # the newest log file's torn tail: an append that never returned

    def raise_problems(self, root: Path) -> None:
        """StoreError naming the first problem (and how many more) and the repair command."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
            raise StoreError(str(root), f"{self.problems[0]}{more}; {repair_hint(root)}")


def survey(root: Path, decode_log: bool) -> Survey:
    """Read the manifest, list the segment files and read the log (decoding the lines after the
    manifest's last seq when `decode_log`, else only counting them)."""
    found = read_manifest_or_none(root)
    manifest = Manifest() if found is None else found
    files = segment_files(root)
    logs = [read_log_file(root, name, manifest.last_seq, decode=decode_log) for name in log_names(root)]
    return assess(manifest, found is None, files, logs)


def settled_survey(root: Path, decode_log: bool) -> Survey:
    """A survey without problems, looking again while a running writer moves the manifest on (a flush
    between reading the manifest and reading the log looks like a gap); StoreError when problems stay."""
    for _ in range(SURVEY_ATTEMPTS):
        found = survey(root, decode_log)
        if not found.problems:
            return found
        if read_manifest_or_none(root) == (None if found.manifest_missing else found.manifest):
            break  # nothing moved: the problems are real
    found.raise_problems(root)
    return found


def no_cut(root: Path, who: str) -> StoreError:
    """Why `who` (a reader, a backup) found no consistent cut in SURVEY_ATTEMPTS looks: raises the files'
    problems if they stay; else returns the error that the store kept changing, for the caller to raise."""
    found = read_manifest_or_none(root)
    manifest = Manifest() if found is None else found
    logs = [read_log_file(root, name, manifest.last_seq, decode=False) for name in log_names(root)]
    assess(manifest, found is None, segment_files(root), logs).raise_problems(root)
    return StoreError(str(root), f"the store kept changing under the {who}; try again")


def assess(
    manifest: Manifest, manifest_missing: bool, files: Sequence[str], logs: Sequence[LogFile]
) -> Survey:
    """What the files mean (pure): see the module docstring."""
    found = Survey(manifest=manifest, manifest_missing=manifest_missing, log=list(logs))
    found.problems += journal_gaps(manifest)
    listed = {s.file for s in manifest.segments} | {f for f, _ in manifest.retired}
    runs = log_runs(logs)
    unaccounted: list[str] = []
    for file in files:
        if file in listed:
            continue
        verdict = classify(file, manifest, manifest_missing, runs)
        if verdict is None:
            unaccounted.append(file)
        else:
            found.unlisted.append(verdict)
    if unaccounted and manifest_missing:
        more = f" and {len(unaccounted) - 1} more" if len(unaccounted) > 1 else ""
        found.problems.append(f"{MANIFEST} is missing but {unaccounted[0]}{more} exist")
    elif unaccounted:
        found.problems += [stale_problem(file, manifest) for file in unaccounted]
    damage, found.torn = log_damage(logs)
    found.problems += damage
    if not unaccounted:  # the same story told twice otherwise
        found.problems += log_gaps(manifest, manifest_missing, logs)
    return found


def classify(
    file: str, manifest: Manifest, manifest_missing: bool, runs: Sequence[tuple[int, int]]
) -> Unlisted | None:
    """The verdict on one unlisted file; None when it says the manifest is missing or stale."""
    if file.endswith(".tmp"):
        return Unlisted(file, "unfinished", "an unfinished write (never renamed into place)")
    name = parse_segment_path(file)
    if name is None:
        return Unlisted(file, "quarantine", "not a segment name")
    if covers(runs, name.first, name.last):
        return Unlisted(file, "flushed", "an interrupted flush: the log still holds its events")
    containers = tuple(
        s
        for s in getattr(manifest, name.kind)
        if s.month == name.month and s.first <= name.last and name.first <= s.last
    )
    contiguous = all(a.last + 1 == b.first for a, b in itertools.pairwise(containers))
    if (
        containers
        and containers[0].first <= name.first
        and name.last <= containers[-1].last
        and (contiguous or name.kind != "journal")  # a month's usage skips the seqs of other events
    ):
        return Unlisted(
            file, "covered", "an interrupted compaction: listed segments hold its events", containers
        )
    if manifest_missing or (name.kind == "journal" and name.last > manifest.last_seq):
        return None
    return Unlisted(file, "quarantine", "its events are neither in the log nor in a listed segment")


def stale_problem(file: str, manifest: Manifest) -> str:
    return (
        f"{MANIFEST} is stale: it ends at seq {manifest.last_seq} but {file} is past it "
        "and the log no longer holds those events"
    )


def journal_gaps(manifest: Manifest) -> list[str]:
    """The manifest's journal must hold seqs 0..last_seq, each once, in order."""
    expected = 0
    problems = []
    for segment in manifest.journal:
        if segment.first != expected:
            problems.append(
                f"{MANIFEST} lists {segment.file} at seq {segment.first} where seq {expected} is due"
            )
        expected = segment.last + 1
    if expected != manifest.last_seq + 1:
        problems.append(
            f"{MANIFEST}: its journal ends at seq {expected - 1}, its last_seq is {manifest.last_seq}"
        )
    return problems


def log_gaps(manifest: Manifest, manifest_missing: bool, logs: Sequence[LogFile]) -> list[str]:
    """The log must continue right after the manifest's last seq."""
    expected = manifest.last_seq + 1
    for entry in sorted(logs, key=lambda f: f.start):
        if entry.good and entry.end < expected:
            continue  # flushed already: removed after the next flush
        if entry.start > expected:
            missing = f"seqs {expected}..{entry.start - 1} are in neither"
            missing += " the manifest nor the log" if not manifest_missing else " a segment nor the log"
            if manifest_missing:
                return [f"{MANIFEST} is missing and the log starts at seq {entry.start} ({missing})"]
            ends = f"{MANIFEST} ends at seq {expected - 1}"
            return [f"{entry.name} starts at seq {entry.start} but {ends} ({missing})"]
        expected = max(expected, entry.end + 1)
    return []


# -- what the writer does on open -----------------------------------------------------------------


def apply_recovery(root: Path, found: Survey) -> None:
    """Remove what is provably redundant, move the rest of the unlisted files to quarantine/ (with a
    warning naming each), and cut a torn log tail. Call only once `found` has no problems."""
    for item in found.unlisted:
        if item.verdict in ("unfinished", "flushed"):
            (root / item.file).unlink(missing_ok=True)
            continue
        if item.verdict == "covered":
            damage = [p for p in (segment_problem(root, s) for s in item.containers) if p is not None]
            if not damage:
                (root / item.file).unlink(missing_ok=True)
                continue
            reason = f"{item.reason}, but {damage[0]}"
        else:
            reason = item.reason
        moved = quarantine(root, item.file)
        log.warning("event store %s: moved %s to %s: %s", root, item.file, moved.relative_to(root), reason)
    if found.torn is not None:
        os.truncate(root / found.torn.name, found.torn.good_bytes)


def quarantine(root: Path, file: str) -> Path:
    """Move a store file (or directory) under quarantine/, keeping its relative path; never overwrites."""
    target = _quarantine_path(root, file)
    os.replace(root / file, target)
    fsync_dir(target.parent)
    fsync_dir((root / file).parent)
    return target


def keep_copy(root: Path, file: str) -> Path:
    """Copy a store file under quarantine/ (as `quarantine` would move it); the original stays."""
    import shutil

    target = _quarantine_path(root, file)
    shutil.copy2(root / file, target)
    return target


def _quarantine_path(root: Path, file: str) -> Path:
    target = root / QUARANTINE / file
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = 0
    while target.exists():
        suffix += 1
        target = root / QUARANTINE / f"{file}.{suffix}"
    return target
