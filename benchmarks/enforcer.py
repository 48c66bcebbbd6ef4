"""The enforcer's benchmark, each figure beside a baseline measured in the same run:

    uv run python -m benchmarks.enforcer [--events 30000] [--batched-messages 3000] [--authorizations 5000]
                                  [--query-events 10000000] [--runs 1] [--metrics]

1. Usage events/s end to end through a local mosquitto with durability on (fsync'd group commits, PUBACK
   only after the commit): one event per message, then arrays of 100; and the enforcer process's CPU time
   per event (user + system, every thread), steadier than the wall figures on a busy machine. Baseline:
   the same messages relayed by the same broker to a plain subscriber that only parses and acknowledges.
2. Authorize round trip p50/p99 at 1,000 authorizations/s (open loop: each request is sent on schedule,
   whatever the previous ones are doing), and the enforcer's CPU per authorization. Baseline: the same
   load against a plain echo responder. Beside it, the durable commits' own time, and the store's disk
   alone: 4 KB appends + fdatasync timed right after, which a commit cannot beat. Then the same load
   through the HTTP door (`POST /v1/authorize` over 64 keep-alive connections, open loop) on an enforcer
   of its own, and its p99's ratio to the MQTT path's in the same run.
3. The same authorization load while 64 KB arrays of 32,000 bad items arrive, one every 100 ms (each is
   one dead letter); beside it, how long the enforcer takes to handle one such message.
4. `margins spend` "top 100 this month" over a 10M-event store (benchmarks.spend_query builds and times it).

Baselines use the enforcer's own MQTT client (budget.mqtt.connection), so the difference is the
enforcer's work.
The enforcer runs in this process (so it can be watched exactly: the clock stops when its counters say
every event is committed); the load comes from child processes, so neither side steals the other's loop.
`--runs N` repeats sections 1-3 (each run with a broker and stores of its own) and prints each figure as
the median of the runs with their range; the load average is printed at the start, after each run and at
the end. `--metrics` attaches EnforcerMetrics to the enforcers of sections 1 and 2 and scrapes them once
a second on their loop, as a `/metrics` route would: run with and without it to see what metrics cost.
Requires the mosquitto binary (apt-get install mosquitto). Not a test: figures vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.broker import mosquitto
from budget.domain.config import parse_config
from budget.mqtt.broker import BrokerSettings
from budget.mqtt.codec import encode, encode_publish, read
from budget.mqtt.connection import Mqtt5Connection
from budget.mqtt.packets import ConnAck, Connect, Packet, PubAck, Publish, Subscribe
from budget.service.door import HttpSettings
from budget.service.enforcer import Enforcer
from budget.service.metrics import EnforcerMetrics

BENCH_TOKEN = "bench-token"
BENCH_CAPS: dict[str, object] = {
    "default_cap_usd": "1000000",
    "reservation_ttl_s": 600,
    "http": {"apps": {"bench": {"token_sha256": hashlib.sha256(BENCH_TOKEN.encode()).hexdigest()}}},
}


# -- a broker of our own ------------------------------------------------------------------------------


# -- load generators (run as child processes: `python -m benchmarks.enforcer _publish ...`) ----------


async def _read_packet(reader: asyncio.StreamReader) -> Packet:
    """One whole packet from the stream: the first byte, the remaining length, then the body."""
    head = await reader.readexactly(2)
    while head[-1] & 0x80:
        head += await reader.readexactly(1)
    length = sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(head[1:]))
    packet, _ = read(head + await reader.readexactly(length))
    assert packet is not None  # the remaining length said the whole packet is there
    return packet


async def _open(port: int, client_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A clean MQTT 5 session, CONNACK checked."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(Connect(client_id, keepalive_s=60, clean_start=True)))
    connack = await _read_packet(reader)
    if not isinstance(connack, ConnAck) or connack.reason_code:
        raise SystemExit(f"broker refused the connection: {connack}")
    return reader, writer


async def _raw_publish(port: int, messages: list[tuple[str, bytes]], window: int = 1000) -> float:
    """QoS 1 publishes pipelined over one MQTT 5 connection with `window` awaiting PUBACK.

    A minimal protocol writer: the load generator must outrun the system under test, and paho's per-message
    overhead (a few thousand messages/s per process here) would measure the generator instead.
    """
    reader, writer = await _open(port, uuid.uuid4().hex)
    credit = asyncio.Semaphore(window)
    total = len(messages)

    async def read_acks() -> None:
        buffer, acked = b"", 0
        while acked < total:
            chunk = await reader.read(65536)
            if not chunk:
                raise SystemExit("the broker closed the connection")
            buffer += chunk
            pos = 0
            while True:
                ack, size = read(buffer, pos)
                if ack is None:
                    break
                if not isinstance(ack, PubAck) or ack.reason_code >= 0x80:
                    raise SystemExit(f"unexpected packet {ack!r}")
                pos += size
                acked += 1
                credit.release()
            buffer = buffer[pos:]

    acks = asyncio.create_task(read_acks())
    start = time.perf_counter()
    for index, (topic, payload) in enumerate(messages):
        await credit.acquire()
        packet_id = index % 65535 + 1
        writer.write(encode_publish(topic, payload, qos=1, packet_id=packet_id))
        if index % 64 == 0:
            await writer.drain()
    await acks
    elapsed = time.perf_counter() - start
    writer.close()
    return elapsed


def _usage_messages(count: int, per_message: int, users: int, prefix: str) -> list[tuple[str, bytes]]:
    ts = datetime.now(UTC).isoformat()
    out = []
    for m in range(count):
        user = f"bench{m % users}"
        events = [
            {
                "event_id": f"{prefix}-{m}-{k}",
                "user_id": user,
                "ts": ts,
                "model": "gpt-4o-mini",
                "input_tokens": 900,
                "output_tokens": 250,
                "feature": "chat",
            }
            for k in range(per_message)
        ]
        body = json.dumps(events[0] if per_message == 1 else events).encode()
        out.append((f"margins/usage/{user}", body))
    return out


async def _authorize_load(port: int, count: int, rate: float, users: int) -> list[float]:
    """Round trips (ms) of `count` authorizations sent on a fixed schedule at `rate` per second.

    Raw MQTT 5 (requests at QoS 1 carrying "reply_to", replies read at QoS 0) for the reason given in
    `_raw_publish`: aiomqtt's client tops out near the target rate here and would time itself.
    """
    client_id = uuid.uuid4().hex[:12]
    reader, writer = await _open(port, client_id)
    reply_prefix = f"margins/replies/{client_id}"
    writer.write(encode(Subscribe(1, ((f"{reply_prefix}/#", 0),))))
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    total = count + 50

    async def read() -> None:
        while True:
            packet = await _read_packet(reader)
            if not isinstance(packet, Publish):
                continue  # SUBACK / PUBACK
            reply = json.loads(packet.payload)
            began = sent.pop(reply["request_id"], None)
            if began is not None:
                latencies.append((time.perf_counter() - began) * 1000)
                if len(latencies) >= total:
                    done.set()

    reading = asyncio.create_task(read())
    await asyncio.sleep(0.2)  # SUBACK

    def request(i: int, user: str) -> None:
        request_id = f"{client_id}-{i}"
        body: dict[str, object] = {"request_id": request_id, "user_id": user, "model": "gpt-4o-mini"}
        body |= {"max_input_tokens": 1000, "max_output_tokens": 500, "reply_to": f"{reply_prefix}/r"}
        packet_id = i % 65535 + 1
        sent[request_id] = time.perf_counter()
        writer.write(
            encode_publish(f"margins/authorize/{user}", json.dumps(body).encode(), qos=1, packet_id=packet_id)
        )

    for i in range(50):  # warm up the enforcer's paths; not counted
        request(count + i, f"warm{i}")
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.2)
    warm = len(latencies)
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        request(i, f"user{i % users}")
    async with asyncio.timeout(60):
        await done.wait()
    reading.cancel()
    writer.close()
    return latencies[warm:]


class _HttpConnections:
    """Keep-alive HTTP/1.1 connections to one server, each carrying one request at a time.

    A minimal client for the reason given in `_raw_publish`: httpx2 could not keep up with 1,000 requests/s
    here (p50 0.9 s against 68 ms with this client, against the same server), so it would measure itself.
    """

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.size = size
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            self.idle.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))

    async def post(self, path: str, body: bytes, headers: bytes) -> tuple[int, bytes]:
        reader, writer = await self.idle.get()
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + headers + b"Content-Type: application/json\r\n\r\n" + body)
        response_head = await reader.readuntil(b"\r\n\r\n")
        status = int(response_head[9:12])
        length = 0
        for line in response_head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        payload = await reader.readexactly(length)
        self.idle.put_nowait((reader, writer))
        return status, payload

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()


async def _http_authorize_load(port: int, count: int, rate: float, users: int) -> list[float]:
    """Round trips (ms) of `count` POST /v1/authorize sent on a fixed schedule at `rate` per second, each
    in a task of its own (open loop), over keep-alive connections opened before timing."""
    connections = _HttpConnections(port, 64)
    await connections.open()
    headers = f"Authorization: Bearer {BENCH_TOKEN}\r\n".encode()
    latencies: list[float] = []

    async def request(i: int, user: str, record: bool) -> None:
        body: dict[str, object] = {"request_id": f"h-{i}", "user_id": user, "model": "gpt-4o-mini"}
        body |= {"max_input_tokens": 1000, "max_output_tokens": 500}
        began = time.perf_counter()
        status, answer = await connections.post("/v1/authorize", json.dumps(body).encode(), headers)
        if status != 200:
            raise SystemExit(f"HTTP {status}: {answer!r}")
        if record:
            latencies.append((time.perf_counter() - began) * 1000)

    await asyncio.gather(*(request(count + i, f"warm{i}", False) for i in range(50)))  # not counted
    tasks = []
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(request(i, f"user{i % users}", True)))
    async with asyncio.timeout(60):
        await asyncio.gather(*tasks)
    connections.close()
    return latencies


BAD_ARRAY = b"[" + b",".join([b"0"] * 32_000) + b"]"  # 64 KB, 32,000 items, none an object


async def _bad_arrays(port: int, count: int, interval_s: float) -> None:
    """`count` 64 KB bad arrays at QoS 1, one every `interval_s` seconds."""
    reader, writer = await _open(port, uuid.uuid4().hex)
    for index in range(count):
        writer.write(encode_publish("margins/usage/bench-bad", BAD_ARRAY, qos=1, packet_id=index + 1))
        await writer.drain()
        await asyncio.sleep(interval_s)
    for _ in range(count):
        await _read_packet(reader)  # the PUBACKs
    writer.close()


def _child(argv: list[str]) -> None:
    mode, port = argv[0], int(argv[1])
    if mode == "_bad":
        asyncio.run(_bad_arrays(port, int(argv[2]), float(argv[3])))
    elif mode == "_publish":
        count, per_message, prefix = int(argv[2]), int(argv[3]), argv[4]
        messages = _usage_messages(count, per_message, 100, prefix)
        print(json.dumps({"publish_s": asyncio.run(_raw_publish(port, messages))}), flush=True)
    elif mode == "_authorize":
        print(json.dumps(asyncio.run(_authorize_load(port, int(argv[2]), float(argv[3]), 1000))), flush=True)
    elif mode == "_http_authorize":
        latencies = asyncio.run(_http_authorize_load(port, int(argv[2]), float(argv[3]), 1000))
        print(json.dumps(latencies), flush=True)


def _spawn(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.enforcer", *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )


# -- measurements --------------------------------------------------------------------------------------


async def _plain_subscriber_rate(port: int, count: int, per_message: int) -> float:
    """Baseline: events/s that the enforcer's own MQTT client receives when it does nothing but parse the
    JSON and acknowledge at once (no ledger, no store)."""
    got = 0
    first = last = 0.0
    done = asyncio.Event()
    connection: Mqtt5Connection | None = None

    def on_message(message: Publish) -> None:
        nonlocal got, first, last
        json.loads(message.payload)
        assert connection is not None
        connection.ack(message.packet_id)
        if got == 0:
            first = time.perf_counter()
        got += 1
        last = time.perf_counter()
        if got >= count:
            done.set()

    connection = await Mqtt5Connection.open("127.0.0.1", port, receive_maximum=10_000, on_publish=on_message)
    await connection.subscribe(["margins/usage/+"])
    publisher = _spawn("_publish", port, count, per_message, f"plain{per_message}")
    async with asyncio.timeout(300):
        await done.wait()
    await asyncio.to_thread(publisher.wait)
    await connection.disconnect()
    return count * per_message / (last - first)


def _cpu_s() -> float:
    """CPU seconds this process has used, user + system, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _enforcer_rate(
    enforcer: Enforcer, port: int, count: int, per_message: int
) -> tuple[float, float, float]:
    """Events/s through the enforcer, from its first message to the commit of the last; commits/s; and
    CPU microseconds per event over the same span."""
    base_committed, base_commits = enforcer.counters["committed"], enforcer.counters["commits"]
    base_seen = enforcer.counters["UsageRecorded"]
    publisher = _spawn("_publish", port, count, per_message, f"enf{per_message}-{uuid.uuid4().hex[:6]}")
    target = count * per_message
    async with asyncio.timeout(600):
        while enforcer.counters["UsageRecorded"] == base_seen:
            await asyncio.sleep(0.0005)
        first, cpu = time.perf_counter(), _cpu_s()
        while enforcer.counters["committed"] - base_committed < target:
            await asyncio.sleep(0.002)
    elapsed, cpu = time.perf_counter() - first, _cpu_s() - cpu
    await asyncio.to_thread(publisher.wait)
    commits = enforcer.counters["commits"] - base_commits
    return target / elapsed, commits / elapsed, cpu / target * 1e6


async def _echo_round_trips(port: int, count: int, rate: float) -> list[float]:
    """Baseline: the same load against a responder on the enforcer's MQTT client that answers at once (no
    ledger, no store): what the MQTT round trips alone cost here."""
    connection: Mqtt5Connection | None = None

    def on_message(message: Publish) -> None:
        request = json.loads(message.payload)
        body = {"request_id": request["request_id"], "decision": "allow", "model": request["model"]}
        body |= {"reservation_id": "echo", "remaining_usd": 1.0, "reason": ""}
        assert connection is not None
        connection.ack(message.packet_id)
        reply_to: str = request.get("reply_to") or message.response_topic or "margins/replies/none"
        connection.publish(reply_to, json.dumps(body).encode(), correlation=message.correlation)

    connection = await Mqtt5Connection.open("127.0.0.1", port, on_publish=on_message)
    await connection.subscribe(["margins/authorize/+"])
    try:
        return await _load_latencies(port, count, rate)
    finally:
        await connection.disconnect()


async def _load_latencies(port: int, count: int, rate: float, mode: str = "_authorize") -> list[float]:
    load = _spawn(mode, port, count, rate)
    out, _ = await asyncio.to_thread(load.communicate)
    latencies: list[float] = json.loads(out)
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.asynccontextmanager
async def _enforcer(
    port: int,
    directory: Path,
    commit_times: list[float] | None = None,
    metrics: bool = False,
    http: bool = False,
) -> AsyncIterator[Enforcer]:
    config = parse_config(BENCH_CAPS, "(bench)")
    # session_expiry_s=0: a finished run's session must not keep queueing the next runs' messages
    settings = BrokerSettings(
        host="127.0.0.1", port=port, client_id=f"bench-{directory.name}", session_expiry_s=0
    )
    door = HttpSettings("127.0.0.1", 0) if http else None
    async with Enforcer(settings, directory / "store", config, http=door) as enforcer:
        await enforcer.wait_subscribed()
        if commit_times is not None:  # time each durable append of this enforcer's store
            store: Any = enforcer._store
            append = store.append

            def timed(events: Any) -> None:
                start = time.perf_counter()
                append(events)
                commit_times.append((time.perf_counter() - start) * 1000)

            store.append = timed
        if not metrics:
            yield enforcer
            return
        # As a /metrics route on the enforcer's loop would: the histograms observed, a scrape every second.
        exposition = EnforcerMetrics(enforcer).exposition

        async def scrape_every_second() -> None:
            while True:
                await asyncio.sleep(1.0)
                exposition()

        scraper = asyncio.create_task(scrape_every_second())
        try:
            yield enforcer
        finally:
            scraper.cancel()


Figures = dict[str, float]


async def _one_run(args: argparse.Namespace, directory: Path) -> Figures:
    """Every figure of sections 1-3 once, with a broker and stores of its own under `directory`."""
    figures: Figures = {}
    (directory / "broker").mkdir(parents=True)
    with mosquitto(directory / "broker") as port:
        for per_message, messages in ((1, args.events), (100, args.batched_messages)):
            plain = await _plain_subscriber_rate(port, messages, per_message)
            async with _enforcer(port, directory / f"enf{per_message}", metrics=args.metrics) as enforcer:
                rate, commit_rate, cpu_us = await _enforcer_rate(enforcer, port, messages, per_message)
            figures |= {
                f"rate_{per_message}": rate,
                f"commits_{per_message}": commit_rate,
                f"cpu_us_{per_message}": cpu_us,
                f"plain_{per_message}": plain,
            }
        # Let the floods above settle (their writes are still draining to disk and their ledgers are still
        # garbage), so the latency measured is the enforcer's, not the previous phase's I/O.
        del enforcer
        gc.collect()
        await asyncio.to_thread(os.sync)
        await asyncio.sleep(2)
        echo = await _echo_round_trips(port, args.authorizations, 1000.0)
        commits: list[float] = []
        async with _enforcer(port, directory / "auth", commits, metrics=args.metrics) as enforcer:
            cpu = _cpu_s()
            real = await _load_latencies(port, args.authorizations, 1000.0)
            figures["auth_cpu_us"] = (_cpu_s() - cpu) / args.authorizations * 1e6
            figures["granted"] = enforcer.counters["granted"]
        fsyncs = await asyncio.to_thread(_fdatasync_times, directory / "auth" / "store")
        figures |= _spread("auth", real) | _spread("echo", echo) | _spread("commit", commits)
        figures |= _spread("fsync", fsyncs)
        async with _enforcer(port, directory / "http", http=True) as enforcer:
            assert enforcer.http_port is not None
            cpu = _cpu_s()
            over_http = await _load_latencies(
                enforcer.http_port, args.authorizations, 1000.0, "_http_authorize"
            )
            figures["http_cpu_us"] = (_cpu_s() - cpu) / args.authorizations * 1e6
        figures |= _spread("http", over_http)
        figures["http_ratio"] = figures["http_p99"] / figures["auth_p99"]  # paired: the same run's load
        figures["requests"] = len(real)
        bad, handle = await _bad_array_figures(port, directory, args.authorizations)
        figures |= _spread("bad", bad) | {"handle_ms": handle}
    return figures


def _spread(name: str, values: list[float]) -> Figures:
    return {f"{name}_p50": _pct(values, 0.5), f"{name}_p99": _pct(values, 0.99), f"{name}_max": max(values)}


def _fdatasync_times(directory: Path, count: int = 500) -> list[float]:
    """Milliseconds each of `count` 4 KB appends + fdatasync takes on the store's disk, with nothing else
    of the enforcer running: what the disk gives a commit here and now."""
    path = directory / "fsync-probe"
    block = os.urandom(4096)
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return times


def _load() -> str:
    """The 1, 5 and 15 minute load averages: on a shared machine, what the figures were measured under."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _summary(runs: list[Figures], key: str, form: str = "{:,.0f}") -> str:
    """The median of `key` over the runs, with their range when there are several."""
    values = sorted(run[key] for run in runs)
    median = statistics.median(values)
    if len(values) == 1:
        return form.format(median)
    return f"{form.format(median)} ({form.format(values[0])}-{form.format(values[-1])})"


def _verdict(met: bool, value: float, target: float) -> str:
    return "met" if met else f"missed by {abs(1 - value / target):.0%}"


def _report(runs: list[Figures]) -> None:
    """Print each figure as the median of the runs (and their range)."""
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    n = len(runs)
    of = f"median of {n} runs (range)" if n > 1 else "one run"
    print(f"figures: {of}\n")
    for per_message in (1, 100):
        label = "one event per message" if per_message == 1 else f"arrays of {per_message} events"
        target = 10_000 if per_message == 1 else 50_000
        rate = median[f"rate_{per_message}"]
        print(
            f"usage, {label}: {_summary(runs, f'rate_{per_message}')} events/s end to end "
            f"({_summary(runs, f'commits_{per_message}')} commits/s, "
            f"{_summary(runs, f'cpu_us_{per_message}', '{:.1f}')} us CPU per event); "
            f"baseline plain subscriber {_summary(runs, f'plain_{per_message}')} events/s; "
            f"target {target:,} ({_verdict(rate >= target, rate, target)})"
        )
    ms = "{:.2f}"
    p99 = median["auth_p99"]
    print(
        f"authorize at 1,000/s ({median['requests']:,.0f} requests, {median['granted']:,.0f} granted): "
        f"p50 {_summary(runs, 'auth_p50', ms)} ms, p99 {_summary(runs, 'auth_p99', ms)} ms, "
        f"max {_summary(runs, 'auth_max', '{:.1f}')} ms; baseline echo p50 {_summary(runs, 'echo_p50', ms)} "
        f"ms, p99 {_summary(runs, 'echo_p99', ms)} ms; target p99 <= 5 ms ({'met' if p99 <= 5 else 'missed'})"
    )
    print(
        f"  of which the durable commit (write + fdatasync of the log): "
        f"p50 {_summary(runs, 'commit_p50', ms)} ms, p99 {_summary(runs, 'commit_p99', ms)} ms, "
        f"max {_summary(runs, 'commit_max', '{:.1f}')} ms"
    )
    print(
        f"  the store's disk alone (4 KB append + fdatasync, 500 times, right after): "
        f"p50 {_summary(runs, 'fsync_p50', ms)} ms, p99 {_summary(runs, 'fsync_p99', ms)} ms, "
        f"max {_summary(runs, 'fsync_max', '{:.1f}')} ms"
    )
    print(
        f"authorize at 1,000/s over the HTTP door (POST /v1/authorize, keep-alive): "
        f"p50 {_summary(runs, 'http_p50', ms)} ms, p99 {_summary(runs, 'http_p99', ms)} ms, "
        f"max {_summary(runs, 'http_max', '{:.1f}')} ms; p99 {_summary(runs, 'http_ratio', '{:.2f}')}x "
        f"the MQTT path's in the same run; target within 2x "
        f"({'met' if median['http_ratio'] <= 2 else 'missed'})"
    )
    print(
        f"  the enforcer's CPU per authorization (user + system, all threads, commits included): over HTTP "
        f"{_summary(runs, 'http_cpu_us')} us, over MQTT {_summary(runs, 'auth_cpu_us')} us"
    )
    print(
        f"authorize at 1,000/s while a 64 KB bad array (32,000 items) arrives every 100 ms (one dead letter "
        f"each): p50 {_summary(runs, 'bad_p50', ms)} ms, p99 {_summary(runs, 'bad_p99', ms)} ms, "
        f"max {_summary(runs, 'bad_max', '{:.1f}')} ms; handling one such message takes "
        f"{_summary(runs, 'handle_ms', '{:.1f}')} ms (median of 20 each run)"
    )


async def _bench(args: argparse.Namespace, directory: Path) -> None:
    print(f"load average at start: {_load()}; {os.cpu_count()} CPUs; durability on (fsync per commit)")
    runs = []
    for run in range(args.runs):
        figures = await _one_run(args, directory / f"run{run}")
        runs.append(figures)
        if args.runs > 1:
            print(
                f"  run {run + 1}: {figures['rate_1']:,.0f} / {figures['rate_100']:,.0f} events/s, "
                f"{figures['cpu_us_1']:.1f} / {figures['cpu_us_100']:.1f} us CPU per event (one per "
                f"message / arrays of 100), authorize p99 {figures['auth_p99']:.2f} ms (HTTP door "
                f"{figures['http_p99']:.2f} ms); load {_load()}"
            )
    print()
    _report(runs)
    if args.query_events:
        from benchmarks.spend_query import run_query_benchmark

        figures = run_query_benchmark(args.query_events, 12, directory)
        print(
            f'margins spend "top 100 this month" over {figures["events"]:,.0f} events: '
            f"p50 {figures['top100_ms_p50']:.1f} ms; baseline (one unpartitioned Parquet file) "
            f"p50 {figures['baseline_ms_p50']:.1f} ms; target <= 200 ms "
            f"({'met' if figures['top100_ms_p50'] <= 200 else 'missed'})"
        )
    print(f"\nload average at end: {_load()}")


async def _bad_array_figures(port: int, directory: Path, count: int) -> tuple[list[float], float]:
    """Round trips (ms) of authorizations at 1,000/s while a 64 KB array of bad items arrives every 100 ms;
    and the time to handle one such message in the enforcer."""
    bad_count = max(1, int(count / 1000 / 0.1))
    async with _enforcer(port, directory / "bad") as enforcer:
        flood = _spawn("_bad", port, bad_count, 0.1)
        real = await _load_latencies(port, count, 1000.0)
        await asyncio.to_thread(flood.wait)
        async with asyncio.timeout(120):
            while enforcer.counters["rejected_items"] < bad_count * 32_000:
                await asyncio.sleep(0.01)
        return real, _handle_time(enforcer)


def _handle_time(enforcer: Enforcer) -> float:
    """Milliseconds to decode, decide and apply one 64 KB bad array (into a batch that is thrown away)."""
    from budget.service.handler import Batch, MessageHandler
    from budget.service.throttle import LogThrottle

    handler = MessageHandler(
        enforcer.ledger, enforcer.counters.copy(), LogThrottle(logging.getLogger("bench"))
    )
    message = Publish("margins/usage/bench-bad", BAD_ARRAY, 1, 1)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        handler.handle(message, datetime.now(UTC), Batch())
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def main() -> None:
    """Print the figures; see the module docstring."""
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        _child(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=30_000, help="one-event messages")
    parser.add_argument("--batched-messages", type=int, default=3_000, help="messages of 100 events each")
    parser.add_argument("--authorizations", type=int, default=5_000, help="at 1,000/s")
    parser.add_argument("--query-events", type=int, default=10_000_000, help="0 skips the query benchmark")
    parser.add_argument("--runs", type=int, default=1, help="runs of sections 1-3: medians and ranges")
    parser.add_argument(
        "--metrics", action="store_true", help="attach EnforcerMetrics and scrape it once a second"
    )
    args = parser.parse_args()
    sys.setswitchinterval(0.001)  # as `margins enforce` does (see budget/cli/enforce.py)
    logging.basicConfig(level=logging.ERROR)  # the floods' dead letters are counted, not printed
    with tempfile.TemporaryDirectory(prefix="margins-bench-") as tmp:
        asyncio.run(_bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
