"""`margins fit` and conversation context: usage simulated with a known system prompt and history is
fitted back within a stated tolerance; no history, no context; Mooncake's conversations by block hashes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sim.calibration.fit_context import fit_line, prefix_turns, turn_index
from sim.io.scenarios import load_scenario
from sim.model.engine import simulate
from sim.model.forecast import summarize
from tests.sim.scenarios import scenario_from
from tests.sim.usage import DATA, fit_cli, usage_events, write_jsonl

SYSTEM, NEW, ANSWER = 2000, 300, 200


def chat(context: dict[str, Any]) -> dict[str, Any]:
    return {
        "router": {"model": "gpt-4o-mini"},
        "cache": {"exact": {"enabled": True}},
        "prompts": {
            "input_tokens": {"mean": NEW, "sigma": 0.6},
            "output_tokens": {"mean": ANSWER, "sigma": 0.5},
            "context": context,
        },
    }


def test_a_known_context_is_fitted_back_and_forecasts_a_held_back_month(tmp_path: Path) -> None:
    scenario, catalog = scenario_from(chat({"system_tokens": SYSTEM, "history": True}), "true")
    mau = 2000
    observed = simulate(scenario, catalog, mau, 30, seed=1)
    held_back = summarize(simulate(scenario, catalog, mau, 30, seed=2))
    usage = write_jsonl(tmp_path / "month.jsonl", usage_events(observed))
    code, out, err = fit_cli("--trace", str(usage))
    assert code == 0, err
    assert "# context: history carried" in out
    path = tmp_path / "fitted.toml"
    path.write_text(out)  # as printed: no hand edits
    fitted, fitted_catalog = load_scenario(path)
    context = fitted.prompts.context
    # Tolerances: the system prompt within 5%, the new input's mean within 10% (it is the slope, about
    # 500 tokens a turn, less the mean answer: its error is the slope's) and its sigma within 0.05, the
    # month's cost within 5%.
    assert context.history
    assert context.system_tokens == pytest.approx(SYSTEM, rel=0.05)
    assert fitted.prompts.input_tokens.mean == pytest.approx(NEW, rel=0.10)
    assert fitted.prompts.input_tokens.sigma == pytest.approx(0.6, abs=0.05)
    forecast = summarize(simulate(fitted, fitted_catalog, mau, 30, seed=3))
    assert forecast["cost_usd"] == pytest.approx(held_back["cost_usd"], rel=0.05)


def test_without_history_no_context_is_fitted(tmp_path: Path) -> None:
    scenario, catalog = scenario_from(chat({"system_tokens": SYSTEM, "history": False}))
    usage = write_jsonl(tmp_path / "month.jsonl", usage_events(simulate(scenario, catalog, 500, 30, seed=1)))
    code, out, err = fit_cli("--trace", str(usage))
    assert code == 0, err
    assert "no history carried" in out and "[prompts.context]" not in out and "context = " not in out


def test_the_line_reads_slope_and_intercept_of_input_against_turn() -> None:
    turn = np.tile(np.arange(4), 10)
    inputs = 2300 + 500 * turn  # system 2000 + message 300, each turn adding 300 + an answer of 200
    line = fit_line(turn, inputs, 200.0, 10)
    assert line is not None
    assert line.slope == pytest.approx(500) and line.intercept == pytest.approx(2300)
    assert line.history and line.new_input == pytest.approx(300) and line.system_tokens == 2000


def test_turn_index_counts_messages_within_sessions_of_each_user() -> None:
    user = np.array([0, 0, 1, 0, 0, 1])
    t = np.array([0.0, 60.0, 10.0, 4000.0, 4030.0, 20.0])  # user 0: a new session after a 66-min gap
    index, sessions = turn_index(user, t)
    assert index.tolist() == [0, 1, 0, 0, 1, 1] and sessions == 3


def test_block_hashes_chain_a_conversations_turns() -> None:
    blocks = (
        (0, 1, 2),  # a conversation's first turn: the system prompt's block, then its own
        (0, 5, 6),  # another conversation
        (0, 1, 2, 3, 4),  # the first's next turn: its blocks, then the answer and a new message
        (0, 1, 9),  # also extends the first's blocks but its last (a partial block, completed otherwise)
        (0, 2, 1),  # shares only the system prompt's block: a conversation of its own
        (0, 1, 2, 3, 7, 8),  # extends the third, its longest match
    )
    previous, turn = prefix_turns(blocks)
    assert previous.tolist() == [-1, -1, 0, 0, -1, 2]
    assert turn.tolist() == [0, 0, 1, 1, 0, 2]


def test_a_mooncake_trace_reports_its_conversations_but_fits_no_context() -> None:
    code, out, err = fit_cli("--trace", str(DATA / "mooncake_conversation_sample.jsonl"))
    assert code == 0, err
    assert "requests continue an earlier one by their block hashes" in out
    assert "[prompts.context]" not in out and "context = " not in out
