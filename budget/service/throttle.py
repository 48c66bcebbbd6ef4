"""Log lines for repeated trouble, rate-limited: the first of a kind at once, then one summary per interval.

A flood of bad messages must not become a flood of log lines (writing them is slower than rejecting the
messages, and it buries everything else); the counters on margins/enforcer/stats keep the exact totals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_INTERVAL_S = 10.0


@dataclass(slots=True)
class _Window:
    until: float
    level: int
    suppressed: int = 0


class LogThrottle:
    """Logs the first line of each `key`, then nothing for that key for `interval_s`; the next line of the
    key after that, or `flush`, first says how many were left out meanwhile."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        """`logger.log(level, message, *args)` unless a line of this key went out less than an interval
        ago (then only counted)."""
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now < window.until:
            window.suppressed += 1
            return
        if window is not None:
            self._summarise(key, window)
        self._logger.log(level, message, *args)
        self._windows[key] = _Window(now + self._interval, level)

    def warning(self, key: str, message: str, *args: object) -> None:
        """`log` at WARNING."""
        self.log(logging.WARNING, key, message, *args)

    def flush(self) -> None:
        """Summarise every key whose interval has passed (call it now and then, and before stopping)."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if now >= window.until:
                self._summarise(key, window)
                del self._windows[key]

    def flush_all(self) -> None:
        """Summarise every key, whether or not its interval has passed (on shutdown)."""
        for key, window in self._windows.items():
            self._summarise(key, window)
        self._windows.clear()

    def _summarise(self, key: str, window: _Window) -> None:
        if window.suppressed:
            self._logger.log(
                window.level,
                "... and %d more like it (%s) within %.0f s",
                window.suppressed,
                key,
                self._interval,
            )
