"""`ahead` (sim/io/ahead.py): items in order, the next drawn on a second thread, never two ahead."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from sim.errors import InputError
from sim.io.ahead import ahead


def test_items_come_in_order_each_drawn_at_most_one_ahead_of_the_callers() -> None:
    drawn: list[int] = []
    threads: set[str] = set()

    def items() -> Iterator[int]:
        for item in range(6):
            drawn.append(item)
            threads.add(threading.current_thread().name)
            yield item

    received = []
    for item in ahead(items()):
        assert drawn[: item + 1] == list(range(item + 1))  # this item and those before, in order
        assert max(drawn) <= item + 1  # never two ahead
        received.append(item)
    assert received == list(range(6))
    assert threading.current_thread().name not in threads  # drawn on the second thread


def test_an_item_that_fails_to_draw_fails_where_the_caller_would_receive_it() -> None:
    def items() -> Iterator[int]:
        yield 0
        yield 1
        raise InputError("days/2", "cannot be read")

    received = []
    with pytest.raises(InputError, match="cannot be read"):
        for item in ahead(items()):
            received.append(item)
    assert received == [0, 1]


def test_nothing_to_draw_gives_nothing() -> None:
    assert list(ahead([])) == []
