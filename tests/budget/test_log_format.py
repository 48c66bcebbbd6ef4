"""`margins enforce --log-format json`: every line a JSON object with ts, level, logger and message."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from budget.cli.log_format import JsonFormatter
from budget.domain.events import UsageRecorded
from budget.store.event_store import EventStore
from tests.budget.broker import REPO, Broker
from tests.budget.enforcer_helpers import PATIENCE_S
from tests.budget.enforcer_process import EnforcerProcess
from tests.budget.mqtt_helpers import mqtt, publish_all, usage_body
from tests.budget.store_helpers import replayed

REQUIRED = ("ts", "level", "logger", "message")


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed; the assertion names the first one that is not a JSON object with REQUIRED."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError as error:
            raise AssertionError(f"line {number} is not JSON ({error}): {line!r}") from error
        assert isinstance(parsed, dict), f"line {number} is not an object: {line!r}"
        assert all(key in parsed for key in REQUIRED), f"line {number} lacks one of {REQUIRED}: {line!r}"
        ts = datetime.fromisoformat(parsed["ts"])
        assert ts.utcoffset() == timedelta(0), f"line {number}: ts is not UTC: {line!r}"
        lines.append(parsed)
    return lines


def test_a_run_logs_one_json_object_per_line(enforcer_process: EnforcerProcess, mosquitto: Broker) -> None:
    enforcer_process.extra = ["--log-format", "json"]
    enforcer_process.start()

    async def traffic() -> None:
        async with mqtt(mosquitto.port) as pub:
            bodies = [json.dumps(usage_body(f"e{i}")).encode() for i in range(5)]
            await publish_all(pub, "margins/usage/alice", [*bodies, b"{not json"])

    asyncio.run(traffic())
    deadline = time.monotonic() + PATIENCE_S
    while "dead letter (malformed_json)" not in enforcer_process.log.read_text():
        assert time.monotonic() < deadline, f"no dead letter logged:\n{enforcer_process.tail()}"
        time.sleep(0.05)
    assert enforcer_process.terminate() == 0
    lines = _json_lines(enforcer_process.log.read_text())
    messages = [line["message"] for line in lines]
    assert any(m.startswith("enforcer ready") for m in messages)
    assert any(m.startswith("enforcer stopped") for m in messages)
    warning = next(line for line in lines if "dead letter (malformed_json)" in line["message"])
    assert warning["level"] == "WARNING" and warning["logger"] == "margins.enforce"
    assert {line["level"] for line in lines} >= {"INFO", "WARNING"}


def test_sigusr1_writes_every_threads_stack_and_the_enforcer_goes_on(
    enforcer_process: EnforcerProcess, mosquitto: Broker
) -> None:
    enforcer_process.start()
    assert enforcer_process.proc is not None
    enforcer_process.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + PATIENCE_S
    while "most recent call first" not in enforcer_process.log.read_text():
        assert time.monotonic() < deadline, f"no stacks written:\n{enforcer_process.tail()}"
        time.sleep(0.05)
    assert enforcer_process.log.read_text().count("hread 0x") >= 2  # every thread, not only the loop's

    async def usage() -> None:  # still deciding
        async with mqtt(mosquitto.port) as pub:
            await publish_all(pub, "margins/usage/alice", [json.dumps(usage_body("after")).encode()])

    asyncio.run(usage())
    assert enforcer_process.terminate() == 0
    stored = [e.event_id for e in replayed(enforcer_process.store) if isinstance(e, UsageRecorded)]
    assert stored == ["after"]


def test_a_failed_start_ends_with_a_json_line_and_its_exit_code(tmp_path: Path, caps_file: Path) -> None:
    store = tmp_path / "store"
    margins = str(Path(sys.executable).parent / "margins")
    nowhere = "mqtt://127.0.0.1:1"  # never reached: the store is opened first
    args = [margins, "enforce", "--broker", nowhere, "--store", str(store), "--config", str(caps_file)]
    with EventStore.open(store, flush_interval=None):  # holding the store: the enforcer cannot open it
        done = subprocess.run(
            [*args, "--log-format", "json"],
            capture_output=True,
            cwd=REPO,
            timeout=PATIENCE_S,
        )
    assert done.returncode == 2, done.stderr.decode()
    assert done.stdout == b""
    last = _json_lines(done.stderr.decode())[-1]
    assert last["level"] == "ERROR" and last["exit_code"] == 2
    assert "another process has this store open" in last["message"]


def test_extra_fields_and_exceptions_stay_on_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord(
            "margins.enforce", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info()
        )
    record.user_id = "alice"
    record.where = Path("/tmp/store")  # not JSON: written as its str
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed x" and parsed["level"] == "ERROR"
    assert parsed["user_id"] == "alice" and parsed["where"] == "/tmp/store"
    assert parsed["exception"].startswith("Traceback") and "ValueError: bad\nvalue" in parsed["exception"]
