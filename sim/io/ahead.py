"""Work one item ahead on a second thread: `ahead(items)`.

The streaming engine draws traffic a block of users at a time and opens its days one at a time (sim/io/
streaming_run.py); each next item depends only on the one before it in the same sequence, not on what the
caller does with it. Most of that work is numpy's -- drawing, sorting, gathering, reading files -- which
runs without the interpreter lock, so drawing the next item while the caller works on this one keeps a
second core busy, at the price of holding two items instead of one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def ahead(items: Iterable[T]) -> Iterator[T]:
    """`items` in order, each next one drawn on a second thread while the caller works on the one before
    (at most two held: the caller's and the next). An error drawing an item is raised where the caller
    would have received it; a caller stopping early waits for the item in flight."""
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="margins-ahead") as worker:
        upcoming = worker.submit(next, iterator, _DONE)
        while (item := upcoming.result()) is not _DONE:
            upcoming = worker.submit(next, iterator, _DONE)
            yield item  # type: ignore[misc]
