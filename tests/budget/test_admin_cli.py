"""`margins admin set` and `margins status` against a real mosquitto and `margins enforce`; the checks they
make before touching the broker; and how a status confirms a change."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from budget.cli.admin import confirmation, status_shows
from sim.cli import main as margins
from tests.budget.broker import PASSWORDS, Broker
from tests.budget.enforcer_helpers import Authorizer
from tests.budget.enforcer_process import EnforcerProcess
from tests.budget.mqtt_helpers import mqtt

ADMIN_TOPIC = "margins/admin/users/alice"


def run(*args: str) -> Result:
    return CliRunner().invoke(margins, list(args))


def authorize(port: int, request_id: str) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        async with mqtt(port) as client:
            authorizer = await Authorizer(client).start()
            try:
                return await authorizer.ask(request_id, "alice")
            finally:
                authorizer.stop()

    return asyncio.run(ask())


def test_admin_set_changes_the_cap_the_enforcer_applies_and_status_shows_it(
    enforcer_process: EnforcerProcess,
) -> None:
    enforcer_process.start()
    broker = enforcer_process.broker
    assert authorize(broker.port, "before")["decision"] == "allow"  # fits the $1 default cap

    result = run("admin", "set", "alice", "--cap", "0.000001", "--broker", broker.url, "--format", "json")
    assert result.exit_code == 0, result.output
    confirmed = json.loads(result.stdout)
    assert confirmed["cap_usd"] == pytest.approx(0.000001)
    assert confirmed["user_id"] == "alice"

    assert authorize(broker.port, "after")["decision"] == "deny"  # the same request no longer fits

    shown = run("status", "alice", "--broker", broker.url, "--format", "json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["cap_usd"] == pytest.approx(0.000001)

    table = run("status", "alice", "--broker", broker.url)
    assert "cap_usd" in table.stdout and "1e-06" in table.stdout

    assert enforcer_process.terminate() == 0
    broker.kill()
    fallback = run(
        "status", "alice", "--broker", broker.url, "--store", str(enforcer_process.store), "--format", "json"
    )
    assert fallback.exit_code == 0, fallback.output
    from_store = json.loads(fallback.stdout)
    assert from_store["source"] == "store"
    assert from_store["cap_usd"] == "0.000001"
    assert from_store["user_id"] == "alice"
    assert "reading the store instead" in fallback.stderr


def test_admin_set_plan_and_timezone_then_an_unknown_plan_is_rejected(
    enforcer_process: EnforcerProcess,
) -> None:
    enforcer_process.start()
    url = enforcer_process.broker.url
    result = run("admin", "set", "bob", "--plan", "pro", "--timezone", "Asia/Tokyo", "--broker", url)
    assert result.exit_code == 0, result.output
    assert "Asia/Tokyo" in result.stdout and "pro" in result.stdout
    assert "50" in result.stdout  # the pro plan's cap

    rejected = run("admin", "set", "bob", "--plan", "platinum", "--broker", url, "--timeout", "30")
    assert rejected.exit_code == 1
    assert rejected.stderr.count("\n") == 1
    assert "platinum" in rejected.stderr


def test_the_shipped_acl_lets_the_admin_user_set_and_read_a_cap(
    secured_mosquitto: Broker, tmp_path: Path, caps_file: Path
) -> None:
    enforcer = EnforcerProcess(secured_mosquitto, tmp_path / "store", caps_file, tmp_path / "enforcer.log")
    enforcer.start()
    try:
        (tmp_path / "admin.pw").write_text(PASSWORDS["admin"] + "\n")
        login = [
            "--broker",
            secured_mosquitto.url,
            "--username",
            "admin",
            "--password-file",
            str(tmp_path / "admin.pw"),
        ]
        result = run("admin", "set", "alice", "--cap", "3", *login, "--format", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["cap_usd"] == 3
        shown = run("status", "alice", *login, "--format", "json")
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["cap_usd"] == 3
    finally:
        enforcer.kill()


def test_status_without_broker_or_store_is_one_line_exit_1(enforcer_process: EnforcerProcess) -> None:
    broker = enforcer_process.broker
    broker.kill()
    result = run("status", "alice", "--broker", broker.url, "--timeout", "2")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "--store" in result.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--cap", "0.0000000001"], "whole number of nano-dollars"),
        (["--cap", "-1"], "between 0 and"),
        (["--cap", "lots"], "expected an amount in USD"),
        (["--timezone", "Mars/Olympus_Mons"], "unknown IANA time zone"),
        ([], "nothing to set"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_any_broker(args: list[str], named: str) -> None:
    # port 9 (discard) on loopback: nothing listens, and nothing is tried before the input is checked
    result = run("admin", "set", "alice", *args, "--broker", "mqtt://127.0.0.1:9")
    assert result.exit_code == 2
    assert named in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_bad_user_id_is_one_line_and_exit_2() -> None:
    for command in (["admin", "set", "a/b", "--cap", "1"], ["status", "a#b"]):
        result = run(*command, "--broker", "mqtt://127.0.0.1:9")
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and "cannot be a user id" in result.stderr


def test_only_a_fresh_status_showing_every_setting_confirms() -> None:
    wanted = {"user_id": "alice", "cap_usd": "2.5", "timezone": "Asia/Tokyo"}
    status = {"user_id": "alice", "cap_usd": 2.5, "timezone": "Asia/Tokyo", "plan": None}
    body = json.dumps(status).encode()
    topic = "margins/status/alice"
    assert confirmation(topic, body, False, ADMIN_TOPIC, wanted) == status
    assert confirmation(topic, body, True, ADMIN_TOPIC, wanted) is None  # retained: from before the change
    assert not status_shows(status | {"cap_usd": 2.4}, wanted)
    assert not status_shows(status | {"timezone": "UTC"}, wanted)
    assert confirmation(topic, b"not json", False, ADMIN_TOPIC, wanted) is None


def test_the_admin_messages_dead_letter_is_a_rejection_and_others_are_not() -> None:
    letter = {"topic": ADMIN_TOPIC, "reason": "bad_config", "detail": "unknown plan 'x'"}
    other = letter | {"topic": "margins/admin/users/bob"}
    wanted = {"user_id": "alice", "plan": "x"}
    got = confirmation("margins/deadletter", json.dumps(letter).encode(), False, ADMIN_TOPIC, wanted)
    assert got == {"rejected": "bad_config: unknown plan 'x'"}
    assert confirmation("margins/deadletter", json.dumps(other).encode(), False, ADMIN_TOPIC, wanted) is None
