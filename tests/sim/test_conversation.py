"""Conversation context: the arithmetic of a hand-worked session, cost per session growing faster than
its length, and the provider prompt cache reading the history within its lifetime and not after."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.model import conversation
from sim.model.conversation import SUMMARY_STEP, carry
from sim.model.engine import simulate
from sim.model.policies.prompt_cache import prompt_cache_tokens
from sim.model.randomness import streams_for
from sim.model.reference_context import converse
from sim.model.scenario import ConversationContext
from sim.model.traffic import Traffic, draw
from tests.sim.scenarios import scenario_from

# One session of five turns: each turn's new input and answer.
NEW = [50, 60, 600, 10, 20]
ANSWER = [100, 100, 100, 100, 100]
SYSTEM = 100


def session(new: list[int], answer: list[int], t: list[float] | None = None, user: int = 0) -> Traffic:
    """One session of plain messages (one call each) with these tokens, a minute apart by default."""
    n = len(new)
    times = np.asarray(t if t is not None else [60.0 * k for k in range(n)])
    return Traffic(
        mau=1,
        days=1,
        sessions=1,
        t=times,
        user=np.full(n, user, dtype=np.int64),
        exact_key=np.full(n, -1, dtype=np.int64),
        cluster=np.full(n, -1, dtype=np.int64),
        context=np.full(n, -1, dtype=np.int64),
        hard=np.zeros(n, dtype=bool),
        call_request=np.arange(n, dtype=np.int64),
        call_step=np.zeros(n, dtype=np.int8),
        call_deterministic=np.zeros(n, dtype=bool),
        input_tokens=np.asarray(new, dtype=np.int32),
        output_tokens=np.asarray(answer, dtype=np.int32),
        session_messages=np.asarray([n]),
    )


def sent_both_ways(context: ConversationContext, traffic: Traffic) -> tuple[list[int], list[int]]:
    """What each call sends, by the fast path's rule and by the reference's (each checked equal)."""
    assert traffic.session_messages is not None
    fast = carry(
        context,
        traffic.session_messages,
        traffic.call_request,
        traffic.call_step,
        traffic.call_deterministic,
        traffic.input_tokens.copy(),  # carry overwrites it
        traffic.output_tokens,
    )
    reference = converse(context, traffic).traffic
    assert fast.input_tokens.tolist() == reference.input_tokens.tolist()
    assert fast.call_request.tolist() == reference.call_request.tolist()
    assert fast.output_tokens.tolist() == reference.output_tokens.tolist()
    assert reference.conversation is not None
    assert fast.conversation.history.tolist() == reference.conversation.history.tolist()
    return fast.input_tokens.tolist(), fast.call_step.tolist()


def test_without_a_limit_each_turn_resends_the_system_prompt_and_every_earlier_turn() -> None:
    context = ConversationContext(system_tokens=SYSTEM, history=True, max_tokens=100_000)
    sent, _ = sent_both_ways(context, session(NEW, ANSWER))
    # turn k sends 100 + sum of earlier (new + answer) + its own new input
    assert sent == [150, 100 + 150 + 60, 100 + 310 + 600, 100 + 1010 + 10, 100 + 1120 + 20]


def test_without_history_each_turn_sends_the_system_prompt_and_its_own_message() -> None:
    context = ConversationContext(system_tokens=SYSTEM, history=False, max_tokens=650)
    sent, _ = sent_both_ways(context, session(NEW, ANSWER))
    assert sent == [150, 160, 650, 110, 120]  # 700 is cut to the limit


def test_truncate_drops_the_oldest_turns_until_the_turn_fits() -> None:
    context = ConversationContext(system_tokens=SYSTEM, history=True, max_tokens=1000)
    sent, steps = sent_both_ways(context, session(NEW, ANSWER))
    # Turn 2: 100 + 310 + 600 = 1010 > 1000, so turn 0 (150) goes: 100 + 160 + 600 = 860.
    # Turn 3: 100 + (160 + 700) + 10 = 970 fits. Turn 4: 100 + 970 + 20 > 1000: turn 1 goes, 100 + 810 + 20.
    assert sent == [150, 310, 860, 970, 930]
    assert steps == [0] * 5  # no summary calls


def test_summarize_replaces_the_history_by_a_billed_summary_call() -> None:
    context = ConversationContext(
        system_tokens=SYSTEM, history=True, max_tokens=1000, at_limit="summarize", summary_tokens=150
    )
    traffic = session(NEW, ANSWER)
    sent, steps = sent_both_ways(context, traffic)
    # Turn 2 would send 1010: a summary call condenses system + 310 history into 150; the turn sends
    # 100 + 150 + 600. Turn 3 carries 150 + 700 (960 fits); turn 4 would send 1080: another summary of
    # 100 + 960 history (1060, cut to the 1000 limit), then 100 + 150 + 20.
    assert sent[:5] == [150, 310, 850, 960, 270]
    assert sent[5:] == [410, 1000]  # the summary calls' input, appended after the turns' calls
    assert steps[5:] == [SUMMARY_STEP, SUMMARY_STEP]
    fast = carry(
        context,
        np.asarray([5]),
        traffic.call_request,
        traffic.call_step,
        traffic.call_deterministic,
        traffic.input_tokens.copy(),
        traffic.output_tokens,
    )
    assert fast.call_request[5:].tolist() == [2, 4]  # made for the turns that would not fit
    assert fast.output_tokens[5:].tolist() == [150, 150]


def test_deterministic_chain_steps_carry_no_conversation_and_the_answer_step_enters_the_history() -> None:
    # Two messages; the first runs a chain whose first two steps read a help article.
    traffic = session([40, 50], [300, 200])
    chain = Traffic(
        **{
            **{name: getattr(traffic, name) for name in Traffic.__slots__},
            "call_request": np.asarray([0, 0, 0, 1]),
            "call_step": np.asarray([0, 1, 2, 0], dtype=np.int8),
            "call_deterministic": np.asarray([True, True, False, False]),
            "input_tokens": np.asarray([900, 800, 70, 50], dtype=np.int32),
            "output_tokens": np.asarray([120, 110, 300, 200], dtype=np.int32),
        }
    )
    context = ConversationContext(system_tokens=SYSTEM, history=True)
    sent, _ = sent_both_ways(context, chain)
    assert sent == [900, 800, 100 + 70, 100 + (70 + 300) + 50]


def sized_sessions(messages: int, **prompts: Any) -> dict[str, Any]:
    """Sessions of exactly `messages` messages, fixed token counts, no failures."""
    sure = {"error_rate": 0, "timeout_rate": 0, "bad_completion_rate": 0}
    return {
        "traffic": {"sessions_per_user_month": 2, "messages_per_session": messages},
        "prompts": {
            "input_tokens": {"mean": prompts["new"], "sigma": 0},
            "output_tokens": {"mean": prompts["answer"], "sigma": 0},
            "context": prompts["context"],
        },
        "router": {"model": prompts["model"]},
        "providers": {prompts["model"]: sure},
    }


def cost_by_session_length(table: dict[str, Any]) -> dict[int, np.ndarray]:
    """Every session's cost (nano-dollars), by its number of messages."""
    scenario, catalog = scenario_from(table)
    run = simulate(scenario, catalog, 60, 30, seed=2)
    sizes = run.traffic.session_messages
    assert sizes is not None
    costs = np.add.reduceat(run.cost_nanos, np.cumsum(sizes) - sizes)
    return {int(n): costs[sizes == n] for n in np.unique(sizes)}


@settings(max_examples=20, deadline=None)
@given(
    system=st.integers(0, 3000),
    new=st.integers(1, 2000),
    answer=st.integers(1, 1000),
    model=st.sampled_from(["gpt-4o", "gpt-4o-mini", "claude-haiku-4.5"]),
)
def test_cost_per_session_grows_faster_than_linearly_with_its_messages(
    system: int, new: int, answer: int, model: str
) -> None:
    context = {"system_tokens": system, "history": True, "max_tokens": 10_000_000}
    by_length = cost_by_session_length(
        sized_sessions(4, new=new, answer=answer, model=model, context=context)
    )
    # Fixed tokens and no failures: every session of one length costs the same ...
    assert all(np.all(costs == costs[0]) for costs in by_length.values())
    lengths = sorted(by_length)
    assert len(lengths) >= 4
    # ... and each message costs more, the longer its session: the history grows with every turn.
    per_message = [by_length[n][0] / n for n in lengths]
    assert all(later > earlier for earlier, later in itertools.pairwise(per_message))


def test_without_history_cost_per_session_is_linear_in_its_messages() -> None:
    context = {"system_tokens": 1500, "history": False}
    by_length = cost_by_session_length(
        sized_sessions(4, new=800, answer=300, model="gpt-4o", context=context)
    )
    assert len(by_length) >= 4
    assert len({int(costs[0]) // n for n, costs in by_length.items()}) == 1
    assert all(int(costs[0]) % n == 0 for n, costs in by_length.items())


CACHED_PROVIDER = {
    "prompt_cache": True,
    "prompt_cache_ttl_s": 300,
    "prompt_cache_min_tokens": 1024,
    "error_rate": 0,
    "timeout_rate": 0,
    "bad_completion_rate": 0,
}


def cache_reads(times: list[float], others: tuple[float, ...] = ()) -> tuple[list[int], list[int]]:
    """(read, written) prompt-cache tokens of a two-turn session at `times`, beside one-turn sessions of
    another user at `others`; system prompt 1,200 tokens, each turn 100 new and 200 answer."""
    scenario, _ = scenario_from(
        {
            "prompts": {"context": {"system_tokens": 1200, "history": True}},
            "providers": {"gpt-4o": CACHED_PROVIDER},
        }
    )
    parts = [session([100, 100], [200, 200], times)] + [session([100], [200], [t], user=1) for t in others]
    n = sum(p.requests for p in parts)
    joined = Traffic(
        **{
            **{name: getattr(parts[0], name) for name in Traffic.__slots__},
            "mau": 2,
            "sessions": len(parts),
            "t": np.concatenate([p.t for p in parts]),
            "user": np.concatenate([p.user for p in parts]),
            "exact_key": np.full(n, -1, dtype=np.int64),
            "cluster": np.full(n, -1, dtype=np.int64),
            "context": np.full(n, -1, dtype=np.int64),
            "hard": np.zeros(n, dtype=bool),
            "call_request": np.arange(n, dtype=np.int64),
            "call_step": np.zeros(n, dtype=np.int8),
            "call_deterministic": np.zeros(n, dtype=bool),
            "input_tokens": np.concatenate([p.input_tokens for p in parts]),
            "output_tokens": np.concatenate([p.output_tokens for p in parts]),
            "session_messages": np.asarray([p.requests for p in parts]),
        }
    )
    assert joined.session_messages is not None
    calls = carry(
        scenario.prompts.context,
        joined.session_messages,
        joined.call_request,
        joined.call_step,
        joined.call_deterministic,
        joined.input_tokens.copy(),
        joined.output_tokens,
    )
    traffic = Traffic(
        **{
            **{name: getattr(joined, name) for name in Traffic.__slots__},
            "input_tokens": calls.input_tokens,
            "conversation": calls.conversation,
        }
    )
    read, write = prompt_cache_tokens(scenario, traffic, np.zeros(n, dtype=np.int8), np.ones(n, dtype=bool))
    return read.tolist()[:2], write.tolist()[:2]


def test_the_prompt_cache_reads_the_previous_turn_within_its_lifetime() -> None:
    # Turn 0 sends 1,300 (system + message), written. Turn 1, 100 s later, sends 1,200 + 300 + 100 and
    # reads turn 0's whole prompt; it writes the answer and the new message.
    read, write = cache_reads([0.0, 100.0])
    assert read == [0, 1300]
    assert write == [1300, 300]


def test_the_prompt_cache_reads_nothing_after_its_lifetime() -> None:
    read, write = cache_reads([0.0, 400.0])
    assert read == [0, 0]
    assert write == [1300, 1600]


def test_another_session_keeps_the_shared_system_prompt_warm() -> None:
    # Another user's turn at 350 s sent the same system prompt: turn 1 at 400 s reads that much.
    read, write = cache_reads([0.0, 400.0], others=(350.0,))
    assert read == [0, 1200]
    assert write == [1300, 400]


@pytest.mark.parametrize("at_limit", ["truncate", "summarize"])
def test_working_in_blocks_of_sessions_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, at_limit: str
) -> None:
    context = {"system_tokens": 800, "history": True, "max_tokens": 5000, "at_limit": at_limit}
    scenario, catalog = scenario_from({"prompts": {"context": context, "chains": {"share": 0.3}}})
    whole = simulate(scenario, catalog, 200, 7, seed=4)
    monkeypatch.setattr(conversation, "BLOCK", 97)  # many blocks, each ending at a session's end
    blocks = simulate(scenario, catalog, 200, 7, seed=4)
    reference = converse(scenario.prompts.context, draw(scenario, 200, 7, streams_for(4, 200, 0))).traffic
    assert whole.traffic.requests > 15 * 97
    for run in (blocks, whole):
        assert run.traffic.input_tokens.tolist() == reference.input_tokens.tolist()
        assert run.traffic.call_request.tolist() == reference.call_request.tolist()
    assert np.array_equal(blocks.cost_nanos, whole.cost_nanos)
