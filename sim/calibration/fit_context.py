"""Fit the conversation context ([prompts.context]) from usage: input tokens against the turn index.

Under the context model (sim/model/conversation.py) a turn's input is, on average and while the limit
does not bind,

    system + new + k x (new + answer)          k = the turn's index in its session, 0 for the first

so a least-squares line of input tokens on turn index reads: slope = the history each turn adds (its new
input and its answer), intercept = system prompt + new input. The mean answer (output tokens) is measured
too, so new input = slope - answer and system = intercept - new input. History is judged carried when the
slope is at least half the mean answer (a turn adds at least its answer) and four standard errors above
zero; otherwise the system prompt and the message cannot be told apart (both are in every input alike) and
nothing is fitted: the input-token distribution already holds them.

Sessions are a user's messages with gaps under 30 minutes (as the traffic fit defines them). A message the
exact or semantic cache answered has no input tokens but is still a turn: it counts in the turn index.
Not fitted: the limit and what happens at it (a binding limit bends the line; the largest observed input
is a lower bound of the limit), and a trace without users has no sessions. Mooncake's block hashes show
conversations anyway -- a request whose blocks extend an earlier request's is its next turn
(`prefix_turns`) -- which `margins fit` reports as a note, not as the fitted scenario's context: the trace's
one user makes one session of the fitted traffic, which a history would turn into one endless conversation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.io.traces import session_starts

MIN_TURNS = 30  # turns with a measured input needed for a line, at least two of them past the first
T_HISTORY = 4.0  # standard errors above zero the slope must be to call the history carried


@dataclass(frozen=True, slots=True)
class ContextLine:
    """Input tokens = intercept + slope x turn index, fitted by least squares over `turns` turns."""

    turns: int
    sessions: int
    intercept: float
    slope: float
    slope_se: float
    answer: float  # mean output tokens of the same calls

    @property
    def history(self) -> bool:
        """Does each turn carry the ones before it?"""
        return self.slope >= self.answer / 2 and self.slope > T_HISTORY * self.slope_se

    @property
    def new_input(self) -> float:
        """A turn's own new input, on average (history: the slope less the answer it carries)."""
        return max(self.slope - self.answer, 1.0) if self.history else self.intercept

    @property
    def system_tokens(self) -> int:
        return max(round(self.intercept - self.new_input), 0) if self.history else 0

    def describe(self, sessions: str = "sessions") -> str:
        """One line for the fitted file's notes."""
        return (
            f"input = {self.intercept:,.0f} + {self.slope:,.1f} (+- {self.slope_se:,.1f}) x turn over "
            f"{self.turns:,} turns of {self.sessions:,} {sessions}; mean answer {self.answer:,.0f} tokens"
        )


@dataclass(frozen=True, slots=True)
class SessionFit:
    """The line over sessions, and -- when it shows a carried history -- what the history tells more: the
    sessions split where a new conversation began, and the spread of a turn's own new input."""

    line: ContextLine
    splits: int = 0  # gap-based sessions split where the input dropped
    new_sigma: float | None = None  # log-sd of new inputs measured turn to turn

    def tables(self) -> dict[str, Any]:
        """The [prompts] entries a carried history fits: the context and the new input's lognormal."""
        sigma = self.new_sigma if self.new_sigma is not None else 0.5
        return {
            "input_tokens": {"mean": round(self.line.new_input, 3), "sigma": round(sigma, 4)},
            "context": {"system_tokens": self.line.system_tokens, "history": True},
        }


def fit_sessions(
    user: np.ndarray, t: np.ndarray, inputs: np.ndarray, outputs: np.ndarray
) -> SessionFit | None:
    """The context of messages of `user` at `t`, each with its call's `inputs` and `outputs` (-1: a cache
    answered it, no call).

    A carried history only grows within a conversation (each turn adds its predecessor's answer and its
    own message), so where a measured input falls below the one before it in a session, a new
    conversation began within 30 minutes of the last: the session is split there and the line fitted
    again (a user's sessions that run together would otherwise bend the line down). Consecutive measured
    turns then give each new input exactly -- this input, less the one before and that one's answer --
    whose log-sd is the new input's spread.
    """
    order, opens = session_starts(user, t)
    sent, answered = inputs[order], outputs[order]
    measured = sent >= 0
    answer = float(answered[measured].mean()) if measured.any() else 0.0
    line = fit_line(_turns(opens), sent, answer, int(np.count_nonzero(opens)))
    if line is None or not line.history:
        return None if line is None else SessionFit(line)
    position = np.arange(sent.size)
    before = np.maximum.accumulate(np.where(measured, position, -1))  # the latest measured, up to here
    previous = np.r_[-1, before[:-1]]
    start = np.maximum.accumulate(np.where(opens, position, 0))
    comparable = measured & (previous >= start)
    drops = comparable & (sent < sent[np.maximum(previous, 0)])
    split = opens | drops
    refit = fit_line(_turns(split), sent, answer, int(np.count_nonzero(split)))
    if refit is None:
        return SessionFit(line)
    adjacent = comparable & ~split & (previous == position - 1)
    new = (sent - sent[np.maximum(previous, 0)] - answered[np.maximum(previous, 0)])[adjacent]
    new = new[new > 0]
    sigma = float(np.log(new).std()) if new.size >= MIN_TURNS else None
    return SessionFit(refit, int(np.count_nonzero(drops)), sigma)


def _turns(opens: np.ndarray) -> np.ndarray:
    """Each position's index in its run, runs opening where `opens` is set."""
    position = np.arange(opens.size)
    turns: np.ndarray = position - np.maximum.accumulate(np.where(opens, position, 0))
    return turns


def turn_index(user: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, int]:
    """Each message's index in its session (a user's messages with gaps under 30 min), and the sessions."""
    order, opens = session_starts(user, t)
    index = np.empty(order.size, dtype=np.int64)
    index[order] = _turns(opens)
    return index, int(np.count_nonzero(opens))


def fit_line(turn: np.ndarray, inputs: np.ndarray, answer: float, sessions: int) -> ContextLine | None:
    """Least squares of `inputs` on `turn` over the turns with a measured input (inputs >= 0)."""
    measured = inputs >= 0
    x = turn[measured].astype(np.float64)
    y = inputs[measured].astype(np.float64)
    if x.size < MIN_TURNS or np.count_nonzero(x > 0) < 2:
        return None
    x_mean, y_mean = float(x.mean()), float(y.mean())
    spread = float(((x - x_mean) ** 2).sum())
    if spread == 0:
        return None
    slope = float(((x - x_mean) * (y - y_mean)).sum()) / spread
    intercept = y_mean - slope * x_mean
    residual = y - intercept - slope * x
    variance = float((residual**2).sum()) / max(x.size - 2, 1)
    return ContextLine(
        turns=int(x.size),
        sessions=sessions,
        intercept=intercept,
        slope=slope,
        slope_se=math.sqrt(variance / spread),
        answer=answer,
    )


def prefix_turns(blocks: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Conversations in a trace of prompt block hashes (Mooncake): a request whose blocks start with all
    of an earlier request's blocks but its last (a partial block that the next turn completes) continues
    it, when they share more than the first block (the system prompt every request starts with).

    Returns each request's previous turn (-1: none seen) and its turn index.
    """
    previous = np.full(len(blocks), -1, dtype=np.int64)
    turn = np.zeros(len(blocks), dtype=np.int64)
    latest: dict[tuple[int, ...], int] = {}  # a request's blocks but its last -> the latest such request
    for request, ids in enumerate(blocks):
        for length in range(len(ids) - 1, 1, -1):  # the longest earlier prompt it extends
            parent = latest.get(ids[:length])
            if parent is not None:
                previous[request] = parent
                turn[request] = turn[parent] + 1
                break
        if len(ids) > 2:
            latest[ids[:-1]] = request
    return previous, turn


def growth_note(previous: np.ndarray, inputs: np.ndarray, outputs: np.ndarray) -> str:
    """What a continuing turn adds to the input of the turn before it: that turn's answer and a new
    message (medians: a few pasted documents make the means large)."""
    later = np.flatnonzero(previous >= 0)
    if not later.size:
        return "no request continues an earlier one"
    growth = inputs[later] - inputs[previous[later]]
    answer = outputs[previous[later]]
    message = float(np.median(growth - answer))
    return (
        f"a continuing turn adds a median {float(np.median(growth)):,.0f} tokens (mean "
        f"{float(growth.mean()):,.0f}) to the input of the turn before it: that turn's answer (mean "
        f"{float(answer.mean()):,.0f}) and a new message (median {message:,.0f})"
    )
