"""What actually happened, for a back-test: usage events or a trace as arrays over billed events, and
the cut-off and horizon as a user writes them (an offset such as 40m or 21d, or a date-time)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from budget.domain.catalog import default_catalog
from budget.domain.events import UsageRecorded
from sim.calibration.fit_outcomes import DEFAULT_MODEL
from sim.errors import BacktestError
from sim.io.traces import TraceRows

DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


@dataclass(frozen=True, slots=True)
class Usage:
    """What actually happened, as arrays over billed events (a trace: one row, one request, one call)."""

    t: np.ndarray  # float64 seconds: epoch for usage events, offset from the first request for a trace
    user: np.ndarray  # int64
    model: np.ndarray  # int64 index into models
    models: tuple[str, ...]
    cost_nanos: np.ndarray  # int64
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    message: np.ndarray  # bool: the event is a request (ok or answered by the exact or semantic cache)
    absolute: bool  # are times epoch seconds (dates mean something)?
    trace: TraceRows | None = None
    events: tuple[UsageRecorded, ...] = ()

    @property
    def users(self) -> int:
        return int(np.unique(self.user).size)


def usage_from_trace(rows: TraceRows, model: str | None) -> Usage:
    """A trace priced as `margins replay` prices it: every row at one model's prices."""
    name = model or DEFAULT_MODEL
    if name not in default_catalog():
        raise BacktestError("--model", str(default_catalog().unknown(name)))
    price = default_catalog()[name]
    return Usage(
        t=rows.t,
        user=rows.user,
        model=np.zeros(rows.requests, dtype=np.int64),
        models=(name,),
        cost_nanos=rows.input_tokens * price.input + rows.output_tokens * price.output,
        input_tokens=rows.input_tokens,
        output_tokens=rows.output_tokens,
        message=np.ones(rows.requests, dtype=bool),
        absolute=False,
        trace=rows,
    )


def usage_from_events(events: Sequence[UsageRecorded], where: str) -> Usage:
    """Usage events as billed: every event counts its cost; requests as `margins fit` counts them."""
    if not events:
        raise BacktestError(where, "no usage events")
    models = tuple(sorted({e.model for e in events}))
    users: dict[str, int] = {}
    return Usage(
        t=np.array([e.ts.timestamp() for e in events], dtype=np.float64),
        user=np.array([users.setdefault(e.user_id, len(users)) for e in events], dtype=np.int64),
        model=np.array([models.index(e.model) for e in events], dtype=np.int64),
        models=models,
        cost_nanos=np.array([e.cost_nanos for e in events], dtype=np.int64),
        input_tokens=np.array([e.input_tokens for e in events], dtype=np.int64),
        output_tokens=np.array([e.output_tokens for e in events], dtype=np.int64),
        message=np.array([_is_message(e) for e in events], dtype=bool),
        absolute=True,
        events=tuple(events),
    )


def _is_message(event: UsageRecorded) -> bool:
    return event.outcome == "ok" or (event.outcome == "cache_hit" and event.cache_layer != "fragment")


def parse_duration(text: str, option: str) -> float:
    """'40m', '21d', '1.5h', '3600s' or '2w' as seconds (> 0)."""
    match = DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise BacktestError(option, f"expected a duration such as 40m, 6h, 7d or 2w, got {text!r}")
    return float(match.group(1)) * UNIT_S[match.group(2)]


def parse_cutoff(text: str, usage: Usage) -> float:
    """T as a time in `usage`'s clock: an offset from its first event ('21d') or, for usage events with
    real timestamps, a date or date-time (UTC unless it names its zone)."""
    start = float(usage.t.min())
    if DURATION.fullmatch(text.strip()):
        return start + parse_duration(text, "--train-until")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BacktestError(
            "--train-until", f"expected a date-time (2026-11-21T00:00) or an offset (21d, 40m), got {text!r}"
        ) from None
    if not usage.absolute:
        raise BacktestError(
            "--train-until",
            f"a trace's times count from its first request: give an offset such as 40m, not {text!r}",
        )
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def describe_time(usage_absolute: bool, at: float, start: float) -> str:
    """A time as a reader knows it: a UTC date-time, or an offset from the trace's first request."""
    if usage_absolute:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"+{describe_duration(at - start)}"


def describe_duration(seconds: float) -> str:
    """A duration in its largest whole unit: 40m, 7d, 17.3m, 9.97d."""
    for unit in ("d", "h", "m"):
        if seconds >= UNIT_S[unit]:
            return f"{seconds / UNIT_S[unit]:.3g}{unit}"
    return f"{seconds:.3g}s"
