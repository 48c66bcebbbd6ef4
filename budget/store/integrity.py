"""Checking that a segment is the file its writer wrote: size and sha256 (manifest version 2), or its
Parquet row count (version 1, which recorded no checksums).

Every reader checks before it trusts a file, so a truncated, overwritten, deleted or rewritten segment is
one StoreError naming the file, never a DuckDB or pyarrow traceback, and never a wrong answer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from budget.errors import StoreError
from budget.store.manifest import MANIFEST, Segment, repair_hint

if TYPE_CHECKING:  # pyarrow loads where a file is parsed: `margins spend` checks by hash, without it
    import pyarrow as pa

CHUNK = 1 << 20


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def segment_problem(root: Path, segment: Segment, data: bytes | None = None) -> str | None:
    """What is wrong with a listed segment's file (None: it is the file the manifest describes).

    Checks size and sha256 when the manifest has them, else that it is Parquet with the listed rows.
    `data` is the file's content when the caller has already read it."""
    path = root / segment.file
    try:
        if data is None and segment.sha256 is not None:
            sha256, size = file_digest(path)
        elif data is None:
            data = path.read_bytes()
            sha256, size = "", len(data)
        else:
            sha256, size = hashlib.sha256(data).hexdigest(), len(data)
    except FileNotFoundError:
        return f"{segment.file} is missing (listed in {MANIFEST})"
    except OSError as error:
        return f"{segment.file} cannot be read: {error.strerror or error}"
    if segment.sha256 is not None:
        return digest_problem(segment, sha256, size)
    if segment.size is not None and size != segment.size:
        return f"{segment.file} is damaged: {size} bytes, {MANIFEST} says {segment.size}"
    assert data is not None
    rows = parquet_rows(data)
    if isinstance(rows, str):
        return f"{segment.file} is damaged: not a readable Parquet file ({rows})"
    if rows != segment.rows:
        return f"{segment.file} is damaged: {rows} rows, {MANIFEST} says {segment.rows}"
    return None


def digest_problem(segment: Segment, sha256: str, size: int) -> str | None:
    """What is wrong with a file of `size` bytes hashing to `sha256` as a copy of a version-2 segment
    (None: it is the file the manifest describes)."""
    if segment.size is not None and size != segment.size:
        return f"{segment.file} is damaged: {size} bytes, {MANIFEST} says {segment.size}"
    if sha256 != segment.sha256:
        return f"{segment.file} is damaged: its sha256 is not the one in {MANIFEST} (changed since written)"
    return None


def parquet_rows(data: bytes) -> int | str:
    """The row count in a Parquet file's footer, or why it cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows)
    except (pa.ArrowException, OSError, ValueError) as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__


def damaged(root: Path, reason: str) -> StoreError:
    """The error of a store file that is not what the manifest says."""
    return StoreError(str(root), f"{reason}; {repair_hint(root)}")


def read_verified(root: Path, segment: Segment) -> bytes:
    """A listed segment's bytes, once they are checked against the manifest (else StoreError)."""
    try:
        data = (root / segment.file).read_bytes()
    except FileNotFoundError:
        raise damaged(root, f"{segment.file} is missing (listed in {MANIFEST})") from None
    except OSError as error:
        raise damaged(root, f"{segment.file} cannot be read: {error.strerror or error}") from error
    problem = segment_problem(root, segment, data)
    if problem is not None:
        raise damaged(root, problem)
    return data


def read_table(
    root: Path, segment: Segment, columns: Sequence[str] | None = None, schema: pa.Schema | None = None
) -> pa.Table:
    """A listed segment as an Arrow table, checked first (else StoreError naming the file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = read_verified(root, segment)
    try:
        return pq.read_table(
            pa.BufferReader(data), columns=None if columns is None else list(columns), schema=schema
        )
    except (pa.ArrowException, OSError, ValueError) as error:
        raise damaged(root, f"{segment.file} is damaged: {str(error).splitlines()[0]}") from error


def verify_segments(root: Path, segments: Sequence[Segment], threads: int = 4) -> None:
    """Check every segment (in threads: hashing releases the GIL); the first problem is a StoreError."""
    if len(segments) <= 1:  # `margins spend --top` of a month: its one rollup, no threads to start
        problems = [segment_problem(root, s) for s in segments]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(threads, len(segments))) as pool:
            problems = list(pool.map(lambda s: segment_problem(root, s), segments))
    found = [p for p in problems if p is not None]
    if found:
        more = f" (and {len(found) - 1} more damaged files)" if len(found) > 1 else ""
        raise damaged(root, found[0] + more)


def check_present(root: Path, segments: Sequence[Segment]) -> None:
    """Every listed file exists with its listed size (a stat each: cheap enough for every open)."""
    for segment in segments:
        try:
            size = os.stat(root / segment.file).st_size
        except FileNotFoundError:
            raise damaged(root, f"{segment.file} is missing (listed in {MANIFEST})") from None
        if segment.size is not None and size != segment.size:
            raise damaged(root, f"{segment.file} is damaged: {size} bytes, {MANIFEST} says {segment.size}")


def with_checksum(root: Path, segment: Segment) -> Segment:
    """The segment with the size and sha256 of its file as it is now (upgrading a version-1 entry)."""
    sha256, size = file_digest(root / segment.file)
    return Segment(segment.file, segment.first, segment.last, segment.rows, segment.month, size, sha256)
