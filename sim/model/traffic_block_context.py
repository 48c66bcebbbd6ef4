"""Conversation context a block of users at a time: `traffic.generate`'s arrays, sliced by block.

`traffic.generate` draws the run (`traffic.draw`) and then carries each session's conversation over it
(`traffic._with_context`, sim/model/conversation.py). A turn's history is its session's earlier turns and
a block of `traffic_blocks.blocks` holds whole sessions, so `conversation.carry` run on one block's calls
gives that block's histories and summaries. Three things are global, and are put right here:
- epochs are request ids: the block's first request is added to its epochs (and to the summaries' epochs
  and requests);
- turn calls keep their ids (the block's calls are already first_call on);
- summary calls are numbered after every turn call of the run, in request order: the k-th summary of the
  run is call `totals.calls + k`. The run's turn calls come from the pre-passes (`TrafficTotals.calls`),
  and the only state carried from block to block is how many summaries the earlier blocks made (one
  integer, whatever the run's size).

So concatenated in order, the blocks' turn calls are the first `totals.calls` of `generate`'s calls, their
summary calls the rest, and their histories and epochs `generate`'s `conversation` arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np

from sim.model.conversation import carry
from sim.model.randomness import Streams
from sim.model.scenario import ConversationContext, Scenario
from sim.model.traffic_blocks import (
    BlockConversation,
    TrafficBlock,
    TrafficTotals,
    blocks_with_totals,
    engine_draws,
)


def engine_blocks(
    scenario: Scenario, mau: int, days: int, streams: Streams, users_per_block: int
) -> Iterator[TrafficBlock]:
    """What a day-by-day engine reads, a block of users at a time: `traffic.generate`'s traffic (with its
    conversation context when the scenario has one) and the engine's draws the scenario uses."""
    return engine_blocks_with_totals(scenario, mau, days, streams, users_per_block)[1]


def engine_blocks_with_totals(
    scenario: Scenario, mau: int, days: int, streams: Streams, users_per_block: int
) -> tuple[TrafficTotals, Iterator[TrafficBlock]]:
    """`engine_blocks`, and the run's totals its pre-passes found."""
    totals, drawn = blocks_with_totals(scenario, mau, days, streams, users_per_block, engine_draws(scenario))
    context = scenario.prompts.context
    if not context.active:
        return totals, drawn
    return totals, with_conversation(context, drawn, totals.calls)


def with_conversation(
    context: ConversationContext, drawn: Iterable[TrafficBlock], turn_calls: int
) -> Iterator[TrafficBlock]:
    """Each drawn block (in order, from the run's first) with its conversation carried; `turn_calls` is
    the run's drawn calls (`TrafficTotals.calls`). Carried between blocks: one count of summaries."""
    summaries_before = 0
    for block in drawn:
        carried = block_with_conversation(context, block, turn_calls, summaries_before)
        assert carried.conversation is not None
        summaries_before += carried.conversation.summaries
        yield carried


def block_with_conversation(
    context: ConversationContext, block: TrafficBlock, turn_calls: int, summaries_before: int
) -> TrafficBlock:
    """One drawn block with its sessions' conversation context: input_tokens become what each turn call
    sends, and `conversation` holds its histories, epochs and summary calls (numbered from
    turn_calls + summaries_before). The block's own arrays are left as they are."""
    calls = carry(
        context,
        block.session_messages,
        block.call_request - block.first_request,  # carry numbers requests from 0
        block.call_step,
        block.call_deterministic,
        block.input_tokens.copy(),  # carry writes what each call sends into it
        block.output_tokens,
    )
    turns, first_summary = block.calls, turn_calls + summaries_before
    made = calls.conversation.summaries
    conversation = BlockConversation(
        history=calls.conversation.history,
        epoch=calls.conversation.epoch + block.first_request,  # int32 stays int32, as generate's
        first_summary=summaries_before,
        summary_call=np.arange(first_summary, first_summary + made, dtype=np.int64),
        summary_request=calls.call_request[turns:] + block.first_request,
        summary_step=calls.call_step[turns:],
        summary_input=calls.input_tokens[turns:],
        summary_output=calls.output_tokens[turns:],
        summary_epoch=calls.conversation.summary_epoch + block.first_request,
    )
    return replace(block, input_tokens=calls.input_tokens[:turns], conversation=conversation)
