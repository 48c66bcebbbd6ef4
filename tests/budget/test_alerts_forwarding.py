"""End to end: `margins enforce` raises alerts, `margins alerts` (a real process) posts them to a local
webhook -- once each, retried while the webhook fails or is down, after a restart for what was published
while it was stopped, not twice after a SIGKILL before its acknowledgement, and never a refused one again.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from budget.alerts.delivered import DeliveredRecord
from tests.budget.alerts_process import READY, AlertsProcess
from tests.budget.broker import PASSWORDS, REPO, Broker, free_port
from tests.budget.enforcer_process import EnforcerProcess
from tests.budget.mqtt_helpers import mqtt, usage_body
from tests.budget.tcp_proxy import TcpProxy
from tests.budget.webhook_receiver import Receiver, receiver


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as handle:
        yield handle


@pytest.fixture
def alerts_process(tmp_path: Path, mosquitto: Broker, hook: Receiver) -> Iterator[AlertsProcess]:
    handle = AlertsProcess(hook.url, mosquitto.url, tmp_path / "alerts-state", tmp_path / "alerts.log")
    try:
        yield handle
    finally:
        handle.kill()


def over_the_cap(broker: Broker, user: str) -> None:
    """One usage that takes `user` past the $1.00 default cap: the enforcer alerts soft, then cap."""
    # gpt-4o, 1M input tokens = $2.50
    body = usage_body(
        f"big-{user}", user, model="gpt-4o", input_tokens=1_000_000, output_tokens=0,
        ts=datetime.now(UTC).isoformat(),
    )  # fmt: skip

    async def publish() -> None:
        async with mqtt(broker.port) as pub:
            await pub.publish(f"margins/usage/{user}", json.dumps(body).encode(), qos=1)

    asyncio.run(publish())


def keys(posts: list[dict[str, object]]) -> Counter[object]:
    return Counter(p["id"] for p in posts)


def test_a_cap_alert_arrives_once_with_a_text_line(
    mosquitto: Broker, enforcer_process: EnforcerProcess, alerts_process: AlertsProcess, hook: Receiver
) -> None:
    enforcer_process.start()
    alerts_process.start()
    over_the_cap(mosquitto, "alice")
    hook.wait_for(lambda: len(hook.posts) >= 2, what="soft and cap posted")
    soft, cap = hook.bodies()
    assert (soft["id"], cap["id"]) == (f"soft:alice:{cap['month']}", f"cap:alice:{cap['month']}")
    assert cap["alert"] == "cap" and cap["user_id"] == "alice" and cap["cap_usd"] == 1.0
    assert cap["text"] == f"margins: user alice reached the cap in {cap['month']}: $2.50 spent of a $1.00 cap"
    assert hook.posts[1].headers["Idempotency-Key"] == f"cap:alice:{cap['month']}"
    # A clean stop and a start post nothing again: both were acknowledged.
    assert alerts_process.terminate() == 0
    alerts_process.start()
    over_the_cap(mosquitto, "bob")
    hook.wait_for(lambda: len(hook.posts) >= 4, what="bob's alerts posted")
    assert keys(hook.bodies()) == Counter(
        {f"{k}:{u}:{cap['month']}": 1 for k in ("soft", "cap") for u in ("alice", "bob")}
    )
    assert "alerts stopped: forwarded=2" in alerts_process.text()


def test_a_failing_webhook_is_retried_then_delivered(
    mosquitto: Broker, enforcer_process: EnforcerProcess, alerts_process: AlertsProcess, hook: Receiver
) -> None:
    enforcer_process.start()
    alerts_process.start()
    hook.fail_next(2, 503)
    hook.fail_next(1, 429, {"Retry-After": "3"})
    over_the_cap(mosquitto, "alice")
    hook.wait_for(lambda: len(hook.accepted()) >= 2, what="both delivered")
    assert hook.answered[:5] == [503, 503, 429, 200, 200]
    assert [p["alert"] for p in hook.bodies()] == ["soft"] * 4 + ["cap"]
    assert hook.posts[3].at - hook.posts[2].at >= 3.0  # Retry-After honoured
    assert "token=t0" not in alerts_process.text()  # the webhook's secret path is never logged
    # Down: connections refused until it comes back, then the alert goes through.
    hook.stop()
    over_the_cap(mosquitto, "bob")
    alerts_process.wait_for_log("no answer (ConnectionError")
    hook.start()
    hook.wait_for(lambda: len(hook.accepted()) >= 4, what="bob's alerts delivered after the webhook is back")
    assert keys([p.body for p in hook.accepted()]) == Counter(
        {f"{k}:{u}:{hook.bodies()[0]['month']}": 1 for k in ("soft", "cap") for u in ("alice", "bob")}
    )


def test_alerts_published_while_it_is_stopped_are_delivered_when_it_starts(
    mosquitto: Broker, enforcer_process: EnforcerProcess, alerts_process: AlertsProcess, hook: Receiver
) -> None:
    enforcer_process.start()
    alerts_process.start()  # the broker keeps its session from here on
    assert alerts_process.terminate() == 0
    over_the_cap(mosquitto, "alice")
    over_the_cap(mosquitto, "bob")
    assert hook.posts == []
    alerts_process.start()
    hook.wait_for(lambda: len(hook.posts) >= 4, what="the alerts kept by the broker posted")
    bodies = hook.bodies()
    assert [(b["user_id"], b["alert"]) for b in bodies] == [
        ("alice", "soft"), ("alice", "cap"), ("bob", "soft"), ("bob", "cap"),
    ]  # fmt: skip


def test_after_a_broker_restart_it_reconnects_to_its_session_and_goes_on(
    mosquitto: Broker, enforcer_process: EnforcerProcess, alerts_process: AlertsProcess, hook: Receiver
) -> None:
    enforcer_process.start()
    alerts_process.start()
    over_the_cap(mosquitto, "alice")
    hook.wait_for(lambda: len(hook.posts) >= 2, what="alice's alerts posted")
    mosquitto.restart()
    alerts_process.wait_for_log(READY, count=2)  # subscribed again, on a new connection
    over_the_cap(mosquitto, "bob")
    hook.wait_for(lambda: len(hook.posts) >= 4, what="bob's alerts posted after the restart")
    assert [(b["user_id"], b["alert"]) for b in hook.bodies()] == [
        ("alice", "soft"), ("alice", "cap"), ("bob", "soft"), ("bob", "cap"),
    ]  # fmt: skip


def test_killed_after_posting_before_acknowledging_it_does_not_post_again(
    tmp_path: Path, mosquitto: Broker, enforcer_process: EnforcerProcess, hook: Receiver
) -> None:
    # Through a proxy that swallows what `margins alerts` sends once it is subscribed: its PUBACKs never
    # reach the broker, as if it died between the webhook's answer and its acknowledgement.
    proxy = TcpProxy(mosquitto.port)
    proxy.start()
    forwarder = AlertsProcess(
        hook.url, f"mqtt://127.0.0.1:{proxy.port}", tmp_path / "state", tmp_path / "a.log"
    )
    try:
        enforcer_process.start()
        forwarder.start()
        proxy.swallow.set()
        over_the_cap(mosquitto, "alice")
        hook.wait_for(lambda: len(hook.accepted()) >= 2, what="soft and cap posted")
        record = tmp_path / "state"
        hook.wait_for(lambda: len(DeliveredRecord.open(record)) == 2, what="both recorded as delivered")
        assert forwarder.proc is not None
        forwarder.proc.kill()
        forwarder.proc.wait(timeout=30)
        forwarder.start(broker_url=mosquitto.url)  # the broker redelivers both: unacknowledged
        forwarder.wait_for_log("already delivered, not posted again", count=2)
        over_the_cap(mosquitto, "bob")  # and it goes on forwarding
        hook.wait_for(lambda: len(hook.posts) >= 4, what="bob's alerts posted")
        assert forwarder.terminate() == 0
        assert sorted(keys(hook.bodies()).values()) == [1, 1, 1, 1]
        assert "already_delivered=2" in forwarder.text()
    finally:
        forwarder.kill()
        proxy.stop()


def test_killed_before_recording_a_post_it_posts_again_with_the_same_idempotency_key(
    mosquitto: Broker, enforcer_process: EnforcerProcess, alerts_process: AlertsProcess, hook: Receiver
) -> None:
    # The limit the README states: between the webhook receiving an alert and the record of it, a crash
    # sends it twice; the receiver can tell by the Idempotency-Key.
    enforcer_process.start()
    alerts_process.start()
    hook.hold.set()
    over_the_cap(mosquitto, "alice")
    hook.wait_for(hook.held.is_set, what="the soft alert received and held")
    assert alerts_process.proc is not None
    alerts_process.proc.kill()
    alerts_process.proc.wait(timeout=30)
    hook.hold.clear()
    alerts_process.start()
    hook.wait_for(lambda: len(hook.posts) >= 3, what="soft again, then cap")
    first, again, cap = hook.posts[:3]
    assert first.body["alert"] == again.body["alert"] == "soft" and cap.body["alert"] == "cap"
    assert first.headers["Idempotency-Key"] == again.headers["Idempotency-Key"] == first.body["id"]


def test_a_400_is_not_retried_and_not_posted_again(
    mosquitto: Broker, enforcer_process: EnforcerProcess, alerts_process: AlertsProcess, hook: Receiver
) -> None:
    enforcer_process.start()
    alerts_process.start()
    hook.fail_next(1, 400)
    over_the_cap(mosquitto, "alice")
    hook.wait_for(lambda: len(hook.posts) >= 2, what="soft (refused) and cap posted")
    assert hook.answered[:2] == [400, 200]
    assert [p["alert"] for p in hook.bodies()] == ["soft", "cap"]
    assert alerts_process.terminate() == 0
    log = alerts_process.text()
    assert log.count("webhook refused soft:alice:") == 1 and "HTTP 400: dropped" in log
    assert "dropped=1" in log and "retries" not in log.split("alerts stopped:")[1]
    alerts_process.start()  # acknowledged: the broker does not send it again
    over_the_cap(mosquitto, "bob")
    hook.wait_for(lambda: len(hook.posts) >= 4, what="bob's alerts posted")
    assert [p["user_id"] for p in hook.bodies()] == ["alice", "alice", "bob", "bob"]


def test_with_the_shipped_acl_the_alerts_credential_reads_alerts(
    tmp_path: Path, secured_mosquitto: Broker, caps_file: Path, hook: Receiver
) -> None:
    enforcer = EnforcerProcess(secured_mosquitto, tmp_path / "store", caps_file, tmp_path / "enforcer.log")
    (tmp_path / "alerts.pw").write_text(PASSWORDS["alerts"] + "\n")
    credentials = ["--username", "alerts", "--password-file", str(tmp_path / "alerts.pw")]
    forwarder = AlertsProcess(
        hook.url, secured_mosquitto.url, tmp_path / "state", tmp_path / "alerts.log", extra=credentials
    )
    try:
        enforcer.start()
        forwarder.start()
        body = usage_body(
            "big", "alice", model="gpt-4o", input_tokens=1_000_000, output_tokens=0,
            ts=datetime.now(UTC).isoformat(),
        )  # fmt: skip

        async def publish() -> None:
            async with mqtt(secured_mosquitto.port, "app", PASSWORDS["app"]) as app:
                await app.publish("margins/usage/alice", json.dumps(body).encode(), qos=1)

        asyncio.run(publish())
        hook.wait_for(lambda: len(hook.accepted()) >= 2, what="soft and cap posted")
        assert [p["alert"] for p in hook.bodies()] == ["soft", "cap"]
        assert forwarder.terminate() == 0
    finally:
        forwarder.kill()
        enforcer.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--webhook", "hooks.example.com/x"], "--webhook 'hooks.example.com/x': expected an http:// or https://"),
        (["--webhook", "http://h/", "--broker", "tcp://h"], "--broker: expected mqtt://HOST:PORT"),
        (["--webhook", "http://h/", "--state", "{state_file}"], "alert state"),
        (["--webhook", "http://h/", "--state", "{bad_record}"], "not a record of delivered alerts"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "delivered").write_text("hello\n")
    given = {"--broker": f"mqtt://127.0.0.1:{free_port()}", "--state": str(tmp_path / "state")}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        given[flag] = value.format(state_file=tmp_path / "file", bad_record=tmp_path / "bad")
    command = [str(Path(sys.executable).parent / "margins"), "alerts"]
    for flag, value in given.items():
        command += [flag, value]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
