"""Progress of long commands on stderr: a bar while someone watches, nothing when nobody does.

A bar is drawn only when stderr is a terminal and the command prints for people (not `--format json`):
piped, redirected, CI and test runs write exactly what they wrote without it, and stdout never carries
it. The code doing the work sees a `Progress` -- advance by units that mean something (runs, sweep
points, queries), say what it is doing now -- never the terminal library, which is imported only when
a bar is drawn.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress(Protocol):
    """Where long work reports how far it is."""

    def expect(self, total: int) -> None:
        """The whole work is `total` units (for work that learns its size once it has started)."""

    def advance(self, units: int = 1) -> None:
        """`units` more of the work are done."""

    def note(self, text: str) -> None:
        """What is being done now (shown beside the count)."""

    def say(self, line: str) -> None:
        """A line for the user on stderr, printed above the bar (which is redrawn below it)."""


class Silent:
    """Progress nobody sees: what work reports to when no bar is drawn (its lines still reach stderr)."""

    def expect(self, total: int) -> None:
        pass

    def advance(self, units: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def say(self, line: str) -> None:
        print(line, file=sys.stderr)


SILENT = Silent()


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default: stderr) is a terminal, where a bar can be redrawn in place."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a stand-in without isatty, or a closed stream
        return False


def wanted(fmt: str = "table", enabled: bool = True) -> bool:
    """Whether a command should draw a bar: asked to (`enabled`), printing for people rather than as
    JSON, and with stderr on a terminal."""
    return enabled and fmt != "json" and on_terminal()


class _Bar:
    """Progress drawn as a tqdm bar on stderr."""

    def __init__(self, bar: tqdm[Any]) -> None:
        self._bar = bar

    def expect(self, total: int) -> None:
        self._bar.total = total
        self._bar.refresh()

    def advance(self, units: int = 1) -> None:
        self._bar.update(units)

    def note(self, text: str) -> None:
        self._bar.set_postfix_str(text)

    def say(self, line: str) -> None:
        self._bar.write(line, file=sys.stderr)


@contextmanager
def progress_bar(description: str, unit: str, show: bool, total: int | None = None) -> Iterator[Progress]:
    """A bar counting `unit`s on stderr while the block runs, erased when it ends; `SILENT` when `show`
    is false. Its `total` is given here or later through `Progress.expect`."""
    if not show:
        yield SILENT
        return
    from tqdm import tqdm

    # Every advance and note is drawn (mininterval 0): they come seconds apart, not in a tight loop.
    with tqdm(
        total=total,
        desc=description,
        unit=unit,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        mininterval=0,
    ) as bar:
        yield _Bar(bar)
