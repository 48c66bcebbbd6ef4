"""budget.service.throttle: the first line of a kind at once, then one summary per interval."""

from __future__ import annotations

import logging

import pytest

from budget.service.throttle import LogThrottle


def test_repeated_lines_are_held_back_and_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="throttled")
    now = [0.0]
    throttle = LogThrottle(logging.getLogger("throttled"), interval_s=10, clock=lambda: now[0])
    for i in range(1000):
        throttle.warning("a", "bad thing %d", i)
        throttle.warning("b", "other thing %d", i)
    throttle.flush()  # within the interval: nothing to say yet
    now[0] = 10.0
    throttle.warning("a", "bad thing %d", 1000)  # the interval is over: a summary, then this line
    now[0] = 25.0
    throttle.flush()
    throttle.flush_all()
    assert [r.getMessage() for r in caplog.records] == [
        "bad thing 0",
        "other thing 0",
        "... and 999 more like it (a) within 10 s",
        "bad thing 1000",
        "... and 999 more like it (b) within 10 s",
    ]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}


def test_flush_all_sums_up_what_is_still_held(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="throttled")
    throttle = LogThrottle(logging.getLogger("throttled"), interval_s=10, clock=lambda: 0.0)
    for _ in range(3):
        throttle.log(logging.INFO, "k", "once")
    throttle.flush_all()
    throttle.flush_all()
    assert [r.getMessage() for r in caplog.records] == ["once", "... and 2 more like it (k) within 10 s"]
