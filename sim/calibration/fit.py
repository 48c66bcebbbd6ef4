"""Fit a scenario from observed usage (the enforcer's store or a trace file): its traffic here, its models,
failures and caches in sim/calibration/fit_outcomes.py; fit_scenario joins them into a file that runs.

What is measured, and how it maps onto the scenario (sim/model/traffic.py draws traffic from the same model):
- users: the distinct users with a message; a message is a usage event answered by a model (`ok`) or by
  the exact or semantic cache (`cache_hit`); retried, aborted and failed attempts are not messages.
- sessions: a user's message more than 30 minutes after the previous one opens a new session. Sessions
  per user are 1 + a gamma-Poisson count: its mean and dispersion are fitted by moments.
- messages per session and think time: their means. Diurnal weights: session starts per UTC hour.
- tokens: a lognormal per direction, over model calls; `mean` is the sample mean (so the total is kept)
  and `sigma` the standard deviation of the log.
- repeats, when usage events carry `prompt_hash`: prompts sent more than once make a uniform catalog of
  that many prompts and `repeat_share` is the share of messages that send one of them.
- conversation context, when the usage has users: input tokens against the turn index within a session
  (sim/calibration/fit_context.py); a carried history gives [prompts.context] and makes `input_tokens`
  the turns' own new input.

The observed period is fitted as one month: a one-hour trace gives a month that looks like that hour.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from budget.domain.events import UsageRecorded
from sim.calibration import fit_context
from sim.calibration.fit_outcomes import fit_outcomes
from sim.errors import FitError
from sim.io.traces import TraceRows, detect_format, parse_trace, read_trace_text, session_starts, usage_events

MAX_DISPERSION = 50.0  # "no extra spread": a gamma shape this large is practically a Poisson


@dataclass(frozen=True, slots=True)
class Observed:
    """Messages (one per request) and model calls, as arrays."""

    t: np.ndarray  # float64 seconds (any origin) per message
    user: np.ndarray  # int64 per message
    prompt: np.ndarray  # int64 prompt key per message, -1 when unknown
    input_tokens: np.ndarray  # per model call
    output_tokens: np.ndarray
    start: str  # YYYY-MM-DD of the first message
    # Per message, its model call's input and output tokens (-1: answered by a cache, no call); a trace's
    # block hashes per message (Mooncake), if any.
    message_input: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    message_output: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    blocks: tuple[tuple[int, ...], ...] = ()
    # The usage events themselves (a store or usage-jsonl): their models, failures and cache hits.
    events: tuple[UsageRecorded, ...] = ()


def observed_from_events(events: Iterable[UsageRecorded], where: str) -> Observed:
    """Messages and calls from usage events (any order)."""
    t: list[float] = []
    users: dict[str, int] = {}
    user: list[int] = []
    prompts: dict[str, int] = {}
    prompt: list[int] = []
    inputs: list[int] = []
    outputs: list[int] = []
    message_input: list[int] = []
    message_output: list[int] = []
    first: datetime | None = None
    kept = tuple(events)
    for event in kept:
        if event.outcome == "ok":
            inputs.append(event.input_tokens)
            outputs.append(event.output_tokens)
        elif event.outcome != "cache_hit" or event.cache_layer == "fragment":
            continue  # a failed, aborted or retried attempt, or one step of a chain: not a message
        message_input.append(event.input_tokens if event.outcome == "ok" else -1)
        message_output.append(event.output_tokens if event.outcome == "ok" else -1)
        first = event.ts if first is None or event.ts < first else first
        t.append(event.ts.timestamp())
        user.append(users.setdefault(event.user_id, len(users)))
        key = event.prompt_hash
        prompt.append(-1 if key is None else prompts.setdefault(key, len(prompts)))
    if not t or first is None:
        raise FitError(where, "no usage to fit (no ok or cache_hit usage events)")
    return Observed(
        t=np.asarray(t, dtype=np.float64),
        user=np.asarray(user, dtype=np.int64),
        prompt=np.asarray(prompt, dtype=np.int64),
        input_tokens=np.asarray(inputs, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        start=first.date().isoformat(),
        message_input=np.asarray(message_input, dtype=np.int64),
        message_output=np.asarray(message_output, dtype=np.int64),
        events=kept,
    )


def observed_from_trace(rows: TraceRows) -> Observed:
    """Every trace row is a message and a model call; Mooncake's hash lists are its prompt keys."""
    return Observed(
        t=rows.t,
        user=rows.user,
        prompt=rows.exact_key,
        input_tokens=rows.input_tokens,
        output_tokens=rows.output_tokens,
        start="2026-11-01",
        message_input=rows.input_tokens,
        message_output=rows.output_tokens,
        blocks=rows.prefix_blocks,
    )


def read_store_usage(path: str | Path, month: str) -> list[UsageRecorded]:
    """The usage events the enforcer counted in `month` (YYYY-MM; events without a month: by their UTC ts).

    Reads without the writer's lock, so it runs beside a live enforcer (budget/store/reader.py)."""
    from budget.errors import BudgetError
    from budget.store.reader import read_usage

    try:
        return read_usage(path, month)
    except BudgetError as error:
        raise FitError(str(path), f"cannot read the store: {error}") from None


def read_trace_observed(path: str | Path, trace_format: str | None) -> Observed:
    """A trace file as observed usage (usage-jsonl keeps outcomes, models and prompt hashes)."""
    where = str(path)
    text = read_trace_text(path)
    trace_format = trace_format or detect_format(where, text)
    if trace_format == "usage-jsonl":
        return observed_from_events(usage_events(where, text), where)
    return observed_from_trace(parse_trace(where, text, trace_format))


def fit_scenario(
    observed: Observed, model: str | None = None, where: str = "(usage)"
) -> tuple[dict[str, Any], list[str]]:
    """A whole scenario table that runs as written, and notes for the fitted file's comments: the traffic
    (fit_table), the models, failures and caches (sim/calibration/fit_outcomes.py), and what was found
    about conversation context. `model` prices every call at one model (a trace's default: gpt-4o-mini)."""
    table = fit_table(observed)
    outcomes = fit_outcomes(observed.events, model, where)
    for section, values in outcomes.tables.items():
        table[section] = {**table.get(section, {}), **values}
    return table, [*outcomes.notes, *fit_notes(observed)]


def fit_table(observed: Observed) -> dict[str, Any]:
    """The traffic and prompts tables that draw traffic like the observed usage."""
    sessions_of_user, messages, think, starts = _sessions(observed)
    extra = sessions_of_user - 1.0
    mean_extra, var_extra = float(extra.mean()), float(extra.var())
    dispersion = mean_extra**2 / (var_extra - mean_extra) if var_extra > mean_extra > 0 else MAX_DISPERSION
    hours = np.bincount(((starts % 86400.0) // 3600.0).astype(np.int64), minlength=24)[:24]
    diurnal = hours / hours.mean()
    traffic: dict[str, Any] = {
        "mau": [int(sessions_of_user.size)],
        "days": 30,
        "start": observed.start,
        "sessions_per_user_month": round(max(float(sessions_of_user.mean()), 1.0), 4),
        "dispersion": round(min(max(dispersion, 0.01), MAX_DISPERSION), 4),
        "messages_per_session": round(messages, 4),
        "think_time_s": round(max(think, 0.001), 3),
        "diurnal": [round(float(w), 4) for w in diurnal],
    }
    keyed = observed.prompt[observed.prompt >= 0]
    _, counts = np.unique(keyed, return_counts=True)
    repeated = counts > 1
    prompts: dict[str, Any] = {
        "input_tokens": _lognormal(observed.input_tokens),
        "output_tokens": _lognormal(observed.output_tokens),
        "paraphrase_share": 0.0,
        "repeat_share": round(float(counts[repeated].sum()) / observed.t.size, 6),
        "catalog_size": max(int(np.count_nonzero(repeated)), 1),
        "zipf_exponent": round(zipf_exponent(counts[repeated]), 4),
    }
    context = _context_fit(observed)
    if context is not None and context.line.history:
        prompts.update(context.tables())
    return {"traffic": traffic, "prompts": prompts}


def _context_fit(observed: Observed) -> fit_context.SessionFit | None:
    """The conversation context over sessions of users (none: a trace of one user)."""
    if np.unique(observed.user).size < 2 or observed.message_input.size != observed.t.size:
        return None
    return fit_context.fit_sessions(
        observed.user, observed.t, observed.message_input, observed.message_output
    )


def fit_notes(observed: Observed) -> list[str]:
    """What the fit found about conversation context, as comment lines for the fitted file."""
    context = _context_fit(observed)
    if context is not None:
        line = context.line
        verdict = (
            f"history carried: system_tokens = {line.system_tokens:,}, new input {line.new_input:,.0f} "
            f"({context.splits:,} sessions split where a new conversation began)"
            if line.history
            else "no history carried (system prompt and message not told apart: both in input_tokens)"
        )
        return [f"context: {line.describe()}", f"context: {verdict}"]
    if not observed.blocks:
        return []
    previous, turn = fit_context.prefix_turns(observed.blocks)
    answer = float(observed.output_tokens.mean())
    conversations = int(np.count_nonzero(turn == 0))
    traced = fit_context.fit_line(turn, observed.message_input, answer, conversations)
    if traced is None:
        return []
    growth = fit_context.growth_note(previous, observed.message_input, observed.output_tokens)
    return [
        f"context (not applied: one user, no sessions): {int(np.count_nonzero(turn)):,} of {turn.size:,} "
        "requests continue an earlier one by their block hashes",
        f"context (not applied): {traced.describe('conversations')}",
        f"context (not applied): {growth}",
    ]


def zipf_exponent(counts: np.ndarray) -> float:
    """Maximum-likelihood exponent of a Zipf law over len(counts) items, ranked by count.

    Popularity decides how often a repeat finds its answer still cached (entries expire), so a uniform
    catalog of the same size would under-forecast the exact cache's hits.
    """
    if counts.size < 2:
        return 0.0
    ordered = np.sort(counts)[::-1].astype(np.float64)
    log_rank = np.log(np.arange(1, ordered.size + 1, dtype=np.float64))
    total, weighted = float(ordered.sum()), float(ordered @ log_rank)

    def log_likelihood(s: float) -> float:
        return -s * weighted - total * math.log(float(np.exp(-s * log_rank).sum()))

    grid = np.linspace(0.0, 3.0, 301)
    return float(grid[int(np.argmax([log_likelihood(float(s)) for s in grid]))])


def _sessions(observed: Observed) -> tuple[np.ndarray, float, float, np.ndarray]:
    """Sessions per user, mean messages per session, mean think time, and session start times."""
    order, new = session_starts(observed.user, observed.t)
    user, t = observed.user[order], observed.t[order]
    gap = np.r_[np.inf, np.diff(t)]
    sessions = int(np.count_nonzero(new))
    per_user = np.bincount(user[new])
    per_user = per_user[per_user > 0].astype(np.float64)
    inside = gap[~new]
    think = float(inside.mean()) if inside.size else 30.0
    return per_user, observed.t.size / max(sessions, 1), think, t[new]


def _lognormal(tokens: np.ndarray) -> dict[str, float]:
    if tokens.size == 0:
        raise FitError("(usage)", "no model calls to fit token counts from")
    logs = np.log(np.maximum(tokens, 1).astype(np.float64))
    return {"mean": round(max(float(tokens.mean()), 1.0), 3), "sigma": round(float(logs.std()), 4)}


def to_toml(table: dict[str, Any], source: str, notes: Iterable[str] = ()) -> str:
    """The fitted table as a scenario file (comments say where it came from, and `notes`)."""
    lines = [f"# Fitted by `margins fit` from {source}.", *(f"# {note}" for note in notes)]
    lines += ['name = "fitted"', ""]
    for section, values in table.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
                lines.append(f"{_toml_key(key)} = {{ {inner} }}")
            else:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_key(key: str) -> str:
    """A bare key when TOML allows one (a model such as gpt-4.1 needs quotes)."""
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        raise FitError("(fit)", f"not a finite number: {value}")
    return repr(value)
