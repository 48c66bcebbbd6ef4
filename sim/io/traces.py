"""Trace files -> Traffic: real arrival times and token counts, one request (one model call) per row.

Three formats:
- `azure`: the Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens); one user, no
  prompt identity, so nothing can repeat.
- `mooncake`: JSON lines {timestamp (ms), input_length, output_length, hash_ids}; hash_ids name the
  prompt's 512-token prefix blocks, so a request whose whole list equals an earlier one repeats it exactly
  (same exact_key) and shared leading ids are a shared prefix (kept in TraceRows.prefix_blocks).
- `usage-jsonl`: margins's own UsageRecorded events as JSON lines (budget.domain.events); users from user_id.

Readers are pure functions of the file's text; a bad row raises TraceError naming file, line and field.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from budget.domain.events import UsageRecorded, decode_usage
from sim.errors import TraceError, UnreadableFile
from sim.io.user_files import read_text
from sim.model.traffic import MONTH_DAYS, SECONDS_PER_DAY, Traffic

TraceFormat = Literal["azure", "mooncake", "usage-jsonl"]
FORMATS: tuple[TraceFormat, ...] = ("azure", "mooncake", "usage-jsonl")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
# Azure's TIMESTAMP: 2023 'YYYY-MM-DD HH:MM:SS.fffffff'; 2024 adds an offset, '...SS.ffffff+00:00'.
_AZURE_STAMP = re.compile(
    r"(?P<head>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<fraction>\d+))?"
    r"(?P<offset>Z|[+-]\d{2}:?\d{2})?"
)
SESSION_GAP_S = 30 * 60.0  # a user's message more than 30 min after the previous one opens a new session


@dataclass(frozen=True, slots=True)
class TraceRows:
    """A trace as parallel arrays, in file order. `exact_key` is -1 where the format has no prompt
    identity; `prefix_blocks` holds each row's block-hash list (Mooncake) or is empty."""

    path: str
    format: TraceFormat
    t: np.ndarray  # float64 seconds since the trace's first request
    user: np.ndarray  # int64 index into `users`
    users: tuple[str, ...]
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    exact_key: np.ndarray  # int64
    prefix_blocks: tuple[tuple[int, ...], ...] = ()

    @property
    def requests(self) -> int:
        return int(self.t.size)

    @property
    def exact_repeats(self) -> int:
        """Requests whose prompt equals an earlier one (what an exact cache with room and time hits)."""
        keyed = self.exact_key[self.exact_key >= 0]
        return int(keyed.size - np.unique(keyed).size)


def detect_format(path: str, text: str) -> TraceFormat:
    """Tell the format from the first non-empty line."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first:
        raise TraceError(path, 0, "(file)", "empty trace")
    if first.lstrip().startswith("{"):
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            row = {}
        if isinstance(row, dict) and ("hash_ids" in row or "input_length" in row):
            return "mooncake"
        if isinstance(row, dict) and ("user_id" in row or row.get("type") == "usage_recorded"):
            return "usage-jsonl"
    elif "TIMESTAMP" in first.split(","):
        return "azure"
    raise TraceError(
        path, 1, "(format)", "cannot tell the trace format; pass --trace-format azure|mooncake|usage-jsonl"
    )


def read_trace(path: str | Path, trace_format: str | None = None) -> TraceRows:
    """Read a trace file; the format is detected from its first line when not given."""
    where = str(path)
    text = read_trace_text(path)
    return parse_trace(where, text, trace_format or detect_format(where, text))


def read_trace_text(path: str | Path) -> str:
    """A trace file's text, or TraceError naming the file."""
    try:
        return read_text(path)
    except UnreadableFile as error:
        raise TraceError(str(path), 0, "(file)", error.reason) from None


def parse_trace(where: str, text: str, trace_format: str) -> TraceRows:
    """A trace's text in a named format as rows."""
    parsers = {"azure": parse_azure, "mooncake": parse_mooncake, "usage-jsonl": parse_usage_jsonl}
    parse = parsers.get(trace_format)
    if parse is None:
        raise TraceError(
            where, 0, "--trace-format", f"unknown format {trace_format!r}; known: {', '.join(FORMATS)}"
        )
    return parse(where, text)


def parse_azure(path: str, text: str) -> TraceRows:
    """The Azure LLM inference trace CSV: TIMESTAMP (UTC, 'YYYY-MM-DD HH:MM:SS.fffffff'
    in the 2023 release, '...SS.ffffff+00:00' in 2024), token columns."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    missing = [name for name in AZURE_COLUMNS if name not in header]
    if missing:
        raise TraceError(path, 1, missing[0], f"missing column; expected {', '.join(AZURE_COLUMNS)}")
    at = [header.index(name) for name in AZURE_COLUMNS]
    stamps: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) < len(header):
            raise TraceError(path, line, AZURE_COLUMNS[0], f"expected {len(header)} columns, got {len(row)}")
        stamps.append(_timestamp(path, line, AZURE_COLUMNS[0], row[at[0]]))
        inputs.append(_tokens(path, line, AZURE_COLUMNS[1], row[at[1]]))
        outputs.append(_tokens(path, line, AZURE_COLUMNS[2], row[at[2]]))
    return _rows(path, "azure", stamps, [0] * len(stamps), ("trace",), inputs, outputs, None, ())


def parse_mooncake(path: str, text: str) -> TraceRows:
    """Mooncake JSON lines; equal hash_ids lists get one exact_key (the id of the list's first use)."""
    stamps: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    keys: list[int] = []
    blocks: list[tuple[int, ...]] = []
    first_use: dict[tuple[int, ...], int] = {}
    for line, row in _json_lines(path, text):
        for name in MOONCAKE_FIELDS:
            if name not in row:
                raise TraceError(path, line, name, "missing field")
        stamps.append(_number(path, line, "timestamp", row["timestamp"]) / 1000.0)
        inputs.append(_tokens(path, line, "input_length", row["input_length"]))
        outputs.append(_tokens(path, line, "output_length", row["output_length"]))
        ids = row["hash_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise TraceError(path, line, "hash_ids", "expected a list of whole numbers")
        prefix = tuple(ids)
        keys.append(first_use.setdefault(prefix, len(first_use)))
        blocks.append(prefix)
    users = [0] * len(stamps)
    return _rows(path, "mooncake", stamps, users, ("trace",), inputs, outputs, keys, tuple(blocks))


def parse_usage_jsonl(path: str, text: str) -> TraceRows:
    """margins usage events, one JSON object a line (the form budget.events.encode_usage writes)."""
    events = usage_events(path, text)
    user_index: dict[str, int] = {}
    users = [user_index.setdefault(event.user_id, len(user_index)) for event in events]
    return _rows(
        path,
        "usage-jsonl",
        [_epoch(event) for event in events],
        users,
        tuple(user_index),
        [event.input_tokens for event in events],
        [event.output_tokens for event in events],
        None,
        (),
    )


def usage_events(path: str, text: str) -> list[UsageRecorded]:
    """Decode usage events, one JSON object a line; a bad line raises TraceError naming line and field."""
    events = []
    for line, row in _json_lines(path, text):
        row.pop("type", None)
        try:
            event = decode_usage(json.dumps(row))
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            reason, _, at = str(error).partition(" - at `$")
            field = at.rstrip("`").lstrip(".") or _missing_field(reason) or "(event)"
            raise TraceError(path, line, field, reason.replace("Expected", "expected")) from None
        if event.input_tokens < 0 or event.output_tokens < 0:
            field = "input_tokens" if event.input_tokens < 0 else "output_tokens"
            raise TraceError(path, line, field, "expected a whole number >= 0")
        events.append(event)
    return events


def to_traffic(rows: TraceRows, exact_scope: str = "global", hard: np.ndarray | None = None) -> Traffic:
    """The trace as the engine's Traffic: one call per request, no chains, no semantic clusters.

    The run spans the 30-day month (or the trace's own span when longer), so the forecast figures are the
    trace's own and are not extrapolated. Sessions: a user's gap of more than 30 minutes opens a new one.
    """
    n = rows.requests
    mau = max(len(rows.users), 1)
    span_days = float(rows.t.max(initial=0.0)) / SECONDS_PER_DAY
    days = max(MONTH_DAYS, math.floor(span_days) + 1)
    exact_key = rows.exact_key
    if exact_scope == "user":
        exact_key = np.where(exact_key >= 0, exact_key * mau + rows.user, -1)
    calls = np.arange(n, dtype=np.int64)
    return Traffic(
        mau=mau,
        days=days,
        sessions=count_sessions(rows.user, rows.t),
        t=rows.t,
        user=rows.user,
        exact_key=exact_key,
        cluster=np.full(n, -1, dtype=np.int64),
        context=np.full(n, -1, dtype=np.int64),
        hard=np.zeros(n, dtype=bool) if hard is None else hard,
        call_request=calls,
        call_step=np.zeros(n, dtype=np.int64),
        call_deterministic=np.zeros(n, dtype=bool),
        input_tokens=rows.input_tokens,
        output_tokens=rows.output_tokens,
        prefix_blocks=rows.prefix_blocks,
    )


def session_starts(user: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The messages' order by user then time, and in that order which open a session: each user's first
    message, and each one more than SESSION_GAP_S after the user's last (at least one message)."""
    order = np.lexsort((t, user))
    u, ts = user[order], t[order]
    return order, np.r_[True, (u[1:] != u[:-1]) | (np.diff(ts) > SESSION_GAP_S)]


def count_sessions(user: np.ndarray, t: np.ndarray) -> int:
    """How many sessions the messages make (see session_starts)."""
    return int(np.count_nonzero(session_starts(user, t)[1])) if t.size else 0


def _rows(
    path: str,
    fmt: TraceFormat,
    stamps: list[float],
    users: list[int],
    names: tuple[str, ...],
    inputs: list[int],
    outputs: list[int],
    keys: list[int] | None,
    blocks: tuple[tuple[int, ...], ...],
) -> TraceRows:
    if not stamps:
        raise TraceError(path, 0, "(file)", "no requests in the trace")
    t = np.asarray(stamps, dtype=np.float64)
    n = t.size
    return TraceRows(
        path=path,
        format=fmt,
        t=t - t.min(),
        user=np.asarray(users, dtype=np.int64),
        users=names,
        input_tokens=np.asarray(inputs, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        exact_key=np.full(n, -1, dtype=np.int64) if keys is None else np.asarray(keys, dtype=np.int64),
        prefix_blocks=blocks,
    )


def _json_lines(path: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as error:
            raise TraceError(path, line, "(json)", f"not valid JSON: {error.msg}") from None
        if not isinstance(row, dict):
            raise TraceError(path, line, "(json)", "expected a JSON object")
        rows.append((line, row))
    return rows


def _number(path: str, line: int, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TraceError(path, line, field, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise TraceError(path, line, field, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise TraceError(path, line, field, f"expected a finite number, got {value!r}")
    return number


def _tokens(path: str, line: int, field: str, value: Any) -> int:
    number = _number(path, line, field, value)
    if number < 0 or number != int(number):
        raise TraceError(path, line, field, f"expected a whole number of tokens >= 0, got {value!r}")
    return int(number)


def _timestamp(path: str, line: int, field: str, value: str) -> float:
    # datetime takes at most 6 fractional digits and Azure 2023 writes 7 (100 ns), so the fraction is
    # added separately rather than parsed. A stamp without an offset is UTC.
    match = _AZURE_STAMP.fullmatch(value.strip())
    try:
        if match is None:
            raise ValueError(value)
        head, fraction, offset = match.group("head", "fraction", "offset")
        stamp = datetime.fromisoformat(head + _iso_offset(offset))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp() + (float("0." + fraction) if fraction else 0.0)
    except ValueError:
        raise TraceError(
            path,
            line,
            field,
            f"expected a timestamp YYYY-MM-DD HH:MM:SS[.fraction][+HH:MM], got {value!r}",
        ) from None


def _iso_offset(offset: str | None) -> str:
    if offset is None:
        return ""
    return "+00:00" if offset == "Z" else offset


def _epoch(event: UsageRecorded) -> float:
    return event.ts.timestamp()


def _missing_field(reason: str) -> str:
    marker = "missing required field `"
    if marker in reason:
        return reason.split(marker, 1)[1].split("`", 1)[0]
    return ""
