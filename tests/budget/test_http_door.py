"""The HTTP door end to end: `margins enforce --http` as a real process on a real mosquitto, httpx2 as the
client. Same decisions, same durability, same dead letters as over MQTT."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
from click.testing import CliRunner

from budget.domain.events import UsageRecorded
from budget.service.http_schema import openapi_json
from sim.cli import main as margins
from tests.budget.broker import REPO, Broker, free_port
from tests.budget.enforcer_helpers import Authorizer
from tests.budget.enforcer_process import CAPS_TOML, EnforcerProcess
from tests.budget.http_door_helpers import (
    AUTH,
    CAPS_WITH_DOOR,
    authorize_body,
    client,
    door_process,
    wait_for,
)
from tests.budget.mqtt_helpers import Collector, mqtt, usage_body
from tests.budget.store_helpers import replayed


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _comparable(reply: dict[str, Any]) -> tuple[object, ...]:
    """What two users' answers must share: everything but the ids and the reservation's deadline."""
    return reply["decision"], reply["model"], reply["remaining_usd"], reply["reason"]


def test_authorize_over_http_grants_then_denies_with_the_same_numbers_as_mqtt(
    mosquitto: Broker, tmp_path: Path
) -> None:
    process, url = door_process(mosquitto, tmp_path)
    process.start()

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        over_http = []
        async with httpx2.AsyncClient(base_url=url, headers=AUTH, timeout=120) as http:
            for i in range(6):
                response = await http.post("/v1/authorize", json=authorize_body(f"h{i}", "hana"))
                assert response.status_code == 200, response.text
                over_http.append(response.json())
        async with mqtt(mosquitto.port) as client_:
            authorizer = await Authorizer(client_).start()
            over_mqtt = []
            for i in range(6):
                await authorizer.send(f"m{i}", "milo", max_input_tokens=1_000, max_output_tokens=400_000)
                over_mqtt.append(await authorizer.answer(f"m{i}"))
            authorizer.stop()
        return over_http, over_mqtt

    over_http, over_mqtt = asyncio.run(scenario())
    # $0.24 and a bit each against a $1.00 cap: four fit, then the cap holds
    assert [r["decision"] for r in over_http] == ["allow"] * 4 + ["deny"] * 2
    assert [_comparable(r) for r in over_http] == [_comparable(r) for r in over_mqtt]
    with client(url) as http:
        status = http.get("/v1/users/hana").json()
    worst = 1_000 * 0.15e-6 + 400_000 * 0.60e-6  # gpt-4o-mini, USD
    assert round(status["reserved_usd"], 9) == round(4 * worst, 9)
    assert status["remaining_usd"] == over_http[-1]["remaining_usd"]
    assert process.terminate() == 0


def test_usage_is_durable_before_its_200(mosquitto: Broker, tmp_path: Path) -> None:
    process, url = door_process(mosquitto, tmp_path)
    process.start()
    now = _now()
    with client(url) as http:
        for i in range(20):
            response = http.post("/v1/usage", json=usage_body(f"d{i}", user="dora", ts=now))
            assert response.status_code == 200
            assert response.json() == {"confirmed": [f"d{i}"]}
        process.kill()  # SIGKILL the moment the last 200 arrived: no clean stop, no flush
    stored = {e.event_id for e in replayed(process.store) if isinstance(e, UsageRecorded)}
    assert stored == {f"d{i}" for i in range(20)}
    process.start()
    with client(url) as http:
        status = http.get("/v1/users/dora").json()
        again = http.post("/v1/usage", json=usage_body("d0", user="dora", ts=now))  # a re-send
        assert again.json() == {"confirmed": ["d0"]}
        assert http.get("/v1/users/dora").json() == status
    one_event = 900 * 0.15e-6 + 250 * 0.60e-6  # gpt-4o-mini, USD
    assert round(status["spent_usd"], 9) == round(20 * one_event, 9)
    assert process.terminate() == 0


def test_http_and_mqtt_usage_of_one_user_add_up_exactly(mosquitto: Broker, tmp_path: Path) -> None:
    process, url = door_process(mosquitto, tmp_path)
    process.start()
    now = _now()
    sizes = [(100 + 37 * i, 10 + 11 * i) for i in range(40)]
    bodies = [
        usage_body(f"u{i}", user="una", ts=now, input_tokens=a, output_tokens=b)
        for i, (a, b) in enumerate(sizes)
    ]
    reference = [dict(body, user_id="ref") for body in bodies]

    async def scenario() -> dict[str, Any]:
        async with mqtt(mosquitto.port) as pub:
            for body in reference:  # all of it over MQTT, for another user: what una must add up to
                await pub.publish("margins/usage/ref", json.dumps(body).encode(), qos=1)
            for body in bodies[1::2]:
                await pub.publish("margins/usage/una", json.dumps(body).encode(), qos=1)
        async with httpx2.AsyncClient(base_url=url, headers=AUTH, timeout=120) as http:
            response = await http.post("/v1/usage", json=bodies[0::2])  # the other half in one array
            assert response.json() == {"confirmed": [b["event_id"] for b in bodies[0::2]]}

            async def settled(user: str) -> dict[str, Any]:
                status: dict[str, Any] = (await http.get(f"/v1/users/{user}")).json()
                return status

            async with asyncio.timeout(120):
                while (await settled("una"))["spent_usd"] != (await settled("ref"))["spent_usd"]:
                    await asyncio.sleep(0.05)
            return await settled("una")

    una = asyncio.run(scenario())
    assert una["spent_usd"] > 0
    assert process.terminate() == 0
    events = [e for e in replayed(process.store) if isinstance(e, UsageRecorded)]
    by_user = {user: sum(e.cost_nanos for e in events if e.user_id == user) for user in ("una", "ref")}
    assert by_user["una"] == by_user["ref"]
    assert sorted(e.event_id for e in events if e.user_id == "una") == sorted(b["event_id"] for b in bodies)


def test_a_bad_token_is_401_and_counted(mosquitto: Broker, tmp_path: Path) -> None:
    process, url = door_process(mosquitto, tmp_path)
    process.start()
    body = authorize_body("x1", "ivan")
    with httpx2.Client(base_url=url, timeout=120) as http:
        assert http.post("/v1/authorize", json=body).status_code == 401  # no token
        wrong = {"Authorization": "Bearer not-the-token"}
        assert http.post("/v1/authorize", json=body, headers=wrong).status_code == 401
        response = http.get("/v1/users/ivan", headers={"Authorization": "Basic Y2hlY2tvdXQ="})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert http.post("/v1/authorize", json=body, headers=AUTH).status_code == 200

    async def stats() -> dict[str, int]:
        async with mqtt(mosquitto.port) as sub:
            seen = await Collector(sub).start("margins/enforcer/stats")
            await seen.wait_for(
                lambda: any(s.get("http_unauthorized") == 3 for s in seen.on("margins/enforcer/stats"))
            )
            seen.stop()
            counters: dict[str, int] = seen.on("margins/enforcer/stats")[-1]
            return counters

    assert asyncio.run(stats())["granted"] == 1
    assert process.terminate() == 0
    assert "not-the-token" not in process.log.read_text()


def test_a_malformed_body_is_400_with_the_mqtt_reason_and_is_dead_lettered(
    mosquitto: Broker, tmp_path: Path
) -> None:
    process, url = door_process(mosquitto, tmp_path)
    process.start()
    missing_ts = {k: v for k, v in usage_body("bad1", user="bea").items() if k != "ts"}
    cases = [
        ("/v1/usage", "margins/usage/bea", b'{"event_id": "e1", "user_id": '),
        ("/v1/usage", "margins/usage/bea", json.dumps(missing_ts).encode()),
        (
            "/v1/usage",
            "margins/usage/bea",
            json.dumps(usage_body("bad2", user="bea", input_tokens=-1)).encode(),
        ),
        (
            "/v1/authorize",
            "margins/authorize/bea",
            json.dumps({"request_id": "a1", "user_id": "bea"}).encode(),
        ),
    ]

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with mqtt(mosquitto.port) as sub:
            dead = await Collector(sub).start("margins/deadletter")
            answers = []
            async with httpx2.AsyncClient(base_url=url, headers=AUTH, timeout=120) as http:
                for path, _, payload in cases:
                    response = await http.post(path, content=payload)
                    assert response.status_code == 400, response.text
                    answers.append(response.json())
            async with mqtt(mosquitto.port) as pub:
                for _, topic, payload in cases:
                    await pub.publish(topic, payload, qos=1)
            await dead.wait_for(lambda: len(dead.on("margins/deadletter")) == 2 * len(cases))
            dead.stop()
            return answers, dead.on("margins/deadletter")

    answers, letters = asyncio.run(scenario())
    reasons = [a["reason"] for a in answers]
    assert reasons == ["malformed_json", "missing_field", "out_of_range", "missing_field"]
    assert [d["reason"] for d in letters] == reasons + reasons  # HTTP's first, then MQTT's: the same
    assert [d["detail"] for d in letters[:4]] == [a["detail"] for a in answers]
    assert [d["topic"] for d in letters[1:4]] == [t for _, t, _ in cases[1:]]
    assert process.terminate() == 0


def test_readyz_is_503_until_subscribed_and_the_served_schema_is_the_file(
    mosquitto: Broker, tmp_path: Path
) -> None:
    mosquitto.kill()  # the broker is down when the enforcer starts
    process, url = door_process(mosquitto, tmp_path)
    process.start(wait_ready=False)
    with httpx2.Client(base_url=url, timeout=120) as http:

        def answered() -> bool:
            try:
                return http.get("/healthz").status_code == 200
            except httpx2.TransportError:
                return False

        wait_for(answered, "the door answers /healthz")
        wait_for(lambda: http.get("/readyz").json().get("reason") != "replaying the event store", "replayed")
        not_ready = http.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json() == {"ready": False, "reason": "not subscribed to the broker"}
        mosquitto.start()
        wait_for(lambda: http.get("/readyz").status_code == 200, "ready once the broker is up")
        assert http.get("/readyz").json() == {"ready": True}
        served = http.get("/openapi.json")
        assert served.status_code == 200
        assert served.content == (REPO / "deploy" / "openapi.json").read_bytes()
    assert process.terminate() == 0


def test_the_schema_file_is_the_schema_the_door_serves() -> None:
    assert (REPO / "deploy" / "openapi.json").read_bytes() == openapi_json()
    schema = json.loads(openapi_json())
    assert sorted(schema["paths"]) == ["/v1/authorize", "/v1/usage", "/v1/users/{user_id}"]


def test_bad_http_flags_and_config_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["enforce", "--broker", "mqtt://127.0.0.1:1", "--store", str(tmp_path / "s")]
    with_apps = tmp_path / "door.toml"
    with_apps.write_text(CAPS_WITH_DOOR)
    result = runner.invoke(margins, [*base, "--config", str(with_apps), "--http", "localhost"])
    assert result.exit_code == 2
    assert "--http localhost: expected HOST:PORT" in result.output
    bad_digest = tmp_path / "bad.toml"
    bad_digest.write_text(CAPS_TOML + '\n[http.apps.shop]\ntoken_sha256 = "my-token"\n')
    result = runner.invoke(margins, [*base, "--config", str(bad_digest), "--http", "127.0.0.1:8080"])
    assert result.exit_code == 2
    assert "http.apps.shop.token_sha256: expected the sha256 of the token as 64 hex digits" in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(margins, [*base, "--config", str(with_apps), "--http", f"127.0.0.1:{port}"])
    assert result.exit_code == 2
    assert f"--http 127.0.0.1:{port}: cannot listen: Address already in use" in result.output


def test_a_stop_answers_what_was_decided_and_every_200_is_stored(mosquitto: Broker, tmp_path: Path) -> None:
    process, url = door_process(mosquitto, tmp_path)
    process.start()
    now = _now()

    async def scenario() -> dict[str, int]:
        limits = httpx2.Limits(max_connections=20)
        async with httpx2.AsyncClient(base_url=url, headers=AUTH, timeout=120, limits=limits) as http:

            async def report(i: int) -> tuple[str, int]:
                try:
                    response = await http.post("/v1/usage", json=usage_body(f"s{i}", user="sam", ts=now))
                except httpx2.TransportError:
                    return f"s{i}", 0  # the door had closed
                return f"s{i}", response.status_code

            tasks = [asyncio.create_task(report(i)) for i in range(400)]
            await asyncio.sleep(0)
            while sum(t.done() for t in tasks) < 50:  # some answered, many still on their way
                await asyncio.sleep(0.005)
            assert process.proc is not None
            process.proc.send_signal(signal.SIGTERM)
            return dict(await asyncio.gather(*tasks))

    codes = asyncio.run(scenario())
    assert process.proc is not None and process.proc.wait(timeout=120) == 0
    assert set(codes.values()) <= {0, 200, 503}
    answered = {event_id for event_id, code in codes.items() if code == 200}
    stored = {e.event_id for e in replayed(process.store) if isinstance(e, UsageRecorded)}
    assert len(answered) >= 50
    assert answered <= stored  # nothing answered 200 is missing


def test_without_apps_the_door_serves_metrics_and_health_and_refuses_v1(
    mosquitto: Broker, tmp_path: Path
) -> None:
    # The shipped example config (as deploy/ runs it) names no application: --http is then for Prometheus
    # and health checks only, and says so.
    port = free_port()
    process = EnforcerProcess(
        mosquitto,
        tmp_path / "store",
        REPO / "deploy" / "caps.example.toml",
        tmp_path / "enforcer.log",
        extra=["--http", f"127.0.0.1:{port}"],
    )
    process.start()
    with httpx2.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=120) as http:
        assert http.get("/healthz").status_code == 200
        wait_for(lambda: http.get("/readyz").status_code == 200, "ready")
        assert http.post("/v1/usage", json=usage_body("n1", ts=_now())).status_code == 401
        assert "margins_http_unauthorized_total 1.0" in http.get("/metrics").text
    assert process.terminate() == 0
    assert "/v1 routes on 127.0.0.1:" in process.log.read_text()
