"""Labelled query groups for semantic-cache calibration, read from files.

Three layouts, told apart by the file's suffix:
- `.jsonl`: one {"text": "...", "group": "intent name" | null} per line; null is out of scope (a query
  no cached answer fits);
- `.csv`: a header with `text` and one of `group`, `intent`, `category`, `label` (BANKING77's train.csv
  and test.csv); an empty group is out of scope;
- `.json`: CLINC150's data_full.json -- an object of splits, each a list of [text, intent]; the intent
  "oos" and the splits named oos_* are out of scope.
Several files are read as one set (BANKING77 ships train and test apart).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.calibration.semantic import OUT_OF_SCOPE
from sim.errors import QuerySetError, UnreadableFile
from sim.io.user_files import read_text

GROUP_COLUMNS = ("group", "intent", "category", "label")
CLINC_OUT_OF_SCOPE = "oos"


@dataclass(frozen=True, slots=True)
class QuerySet:
    """Query texts with their group ids (OUT_OF_SCOPE for none) and the groups' names."""

    texts: tuple[str, ...]
    groups: np.ndarray
    group_names: tuple[str, ...]

    @property
    def out_of_scope(self) -> int:
        return int(np.count_nonzero(self.groups == OUT_OF_SCOPE))


def read_query_sets(paths: Sequence[str | Path]) -> QuerySet:
    """Read and join query files; at least two groups are needed to tell a right answer from a wrong one."""
    pairs: list[tuple[str, str | None]] = []
    for path in paths:
        pairs.extend(_read_one(Path(path)))
    names = sorted({group for _, group in pairs if group is not None})
    if len(names) < 2:
        where = ", ".join(str(p) for p in paths)
        raise QuerySetError(where, "(file)", f"expected queries of at least two groups, found {len(names)}")
    index = {name: number for number, name in enumerate(names)}
    groups = np.array([OUT_OF_SCOPE if g is None else index[g] for _, g in pairs], dtype=np.int64)
    return QuerySet(texts=tuple(text for text, _ in pairs), groups=groups, group_names=tuple(names))


def _read_one(path: Path) -> list[tuple[str, str | None]]:
    where = str(path)
    readers = {".jsonl": _jsonl, ".csv": _csv, ".json": _clinc}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise QuerySetError(where, "(file)", "expected a .jsonl, .csv or CLINC150 .json file")
    try:
        text = read_text(path, "utf-8-sig")  # a BOM (spreadsheet exports) is not part of a header
    except UnreadableFile as error:
        raise QuerySetError(where, "(file)", error.reason) from None
    pairs = reader(text, where)
    if not pairs:
        raise QuerySetError(where, "(file)", "no queries")
    return pairs


def _jsonl(text: str, where: str) -> list[tuple[str, str | None]]:
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise QuerySetError(where, f"line {number}", f"not JSON: {error.msg}") from None
        if not isinstance(row, dict):
            raise QuerySetError(where, f"line {number}", 'expected an object {"text": ..., "group": ...}')
        if "group" not in row:
            raise QuerySetError(where, f"line {number}: group", "missing (null for out of scope)")
        pairs.append(_pair(row.get("text"), row["group"], where, f"line {number}"))
    return pairs


def _csv(text: str, where: str) -> list[tuple[str, str | None]]:
    reader = csv.DictReader(text.splitlines())
    columns = reader.fieldnames or []
    group_column = next((c for c in GROUP_COLUMNS if c in columns), None)
    if "text" not in columns or group_column is None:
        raise QuerySetError(
            where, "header", f"expected a 'text' column and one of {', '.join(GROUP_COLUMNS)}; got {columns}"
        )
    return [_pair(row["text"], row[group_column] or None, where, f"line {reader.line_num}") for row in reader]


def _clinc(text: str, where: str) -> list[tuple[str, str | None]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise QuerySetError(where, "(file)", f"not JSON: {error.msg}") from None
    if not isinstance(data, dict):
        raise QuerySetError(where, "(file)", "expected CLINC150's layout: an object of splits")
    pairs = []
    for split, rows in data.items():
        for number, row in enumerate(_rows(rows, where, split)):
            if not (isinstance(row, list) and len(row) == 2):
                raise QuerySetError(where, f"{split}[{number}]", "expected [text, intent]")
            text_value, intent = row
            outside = split.startswith("oos") or intent == CLINC_OUT_OF_SCOPE
            pairs.append(_pair(text_value, None if outside else intent, where, f"{split}[{number}]"))
    return pairs


def _rows(rows: Any, where: str, split: str) -> Iterable[Any]:
    if not isinstance(rows, list):
        raise QuerySetError(where, split, "expected a list of [text, intent]")
    return rows


def _pair(text: Any, group: Any, where: str, place: str) -> tuple[str, str | None]:
    if not isinstance(text, str) or not text.strip():
        raise QuerySetError(where, f"{place}: text", "expected a non-empty string")
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise QuerySetError(where, f"{place}: group", "expected a group name or null")
    return text, group
