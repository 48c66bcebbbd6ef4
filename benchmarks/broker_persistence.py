"""What saving mosquitto's persistence database more often costs, each setting beside the default in one run:

    uv run python -m benchmarks.broker_persistence [--queued 0,100000] [--rate 2000] [--seconds 12]
                                                   [--settings 1800,60,10,5,2,1,changes:1000]

mosquitto keeps its database (sessions, their queued QoS 1 messages, retained messages) in memory and
writes all of it to disk -- a new file, fsync'd, renamed over the old -- on a clean shutdown and every
`autosave_interval` seconds (or, with `autosave_on_changes true`, every that many changes). A broker killed
between two saves loses every message it acknowledged since the last one that nobody had received yet.
Saving more often narrows that window; the price is a whole-database write on the broker's only thread,
which grows with what is queued (the enforcer down: every usage message waits in its session).

For each setting and queue depth, a fresh mosquitto with the shipped config (anonymous, a scratch
directory) gets an offline persistent session subscribed to margins/usage/+ (the enforcer, down), `queued`
messages for it (not timed), then QoS 1 usage messages at a fixed `rate` (open loop: each sent on
schedule) for `seconds`. Printed per run: PUBACK latency p50 / p99 / max, the saves the broker logged, the
database size, and how long one save blocks the broker (SIGUSR1 under a 1 ms heartbeat: the longest
round trip; median of 3). `1800` (the default, no save during a run) is the baseline. Not a test: figures
vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.broker import broker
from benchmarks.enforcer import _open, _raw_publish, _read_packet
from budget.mqtt.codec import encode, encode_publish, read
from budget.mqtt.packets import Connect, Disconnect, PubAck, Subscribe


@dataclass(frozen=True)
class Run:
    setting: str
    queued: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    acked_per_s: float
    saves: int
    db_mb: float
    save_ms: float


def _autosave_lines(setting: str) -> list[str]:
    if setting.startswith("changes:"):
        return [f"autosave_interval {setting.split(':', 1)[1]}", "autosave_on_changes true"]
    return [f"autosave_interval {setting}", "autosave_on_changes false"]


@contextlib.contextmanager
def _mosquitto(directory: Path, setting: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The shipped config, anonymous, on a free port, with this autosave setting; yields (port, process)."""
    (directory / "data").mkdir(parents=True)
    settings = {
        "persistence_location": f"persistence_location {directory / 'data'}/",
        "autosave_interval": "",
        "autosave_on_changes": "",
    }
    extra = [*_autosave_lines(setting), f"log_dest file {directory / 'mosquitto.log'}", "log_type all"]
    with broker(directory, settings, extra, kill=True) as running:
        yield running


async def _offline_session(port: int) -> None:
    """The enforcer's session, subscribed and then gone: the broker queues every usage message for it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(Connect("bench-enforcer", clean_start=True, session_expiry_s=3600)))
    await _read_packet(reader)
    writer.write(encode(Subscribe(1, (("margins/usage/+", 1),))))
    await _read_packet(reader)
    writer.write(encode(Disconnect()))
    await writer.drain()
    writer.close()


def _usage(index: int, prefix: str) -> tuple[str, bytes]:
    user = f"bench{index % 100}"
    body = {
        "event_id": f"{prefix}-{index}",
        "user_id": user,
        "ts": datetime.now(UTC).isoformat(),
        "model": "gpt-4o-mini",
        "input_tokens": 900,
        "output_tokens": 250,
        "feature": "chat",
        "reservation_id": None,
        "outcome": "ok",
    }
    return f"margins/usage/{user}", json.dumps(body).encode()


async def _open_loop(port: int, rate: float, seconds: float) -> tuple[list[float], float]:
    """QoS 1 publishes on a fixed schedule; (PUBACK latencies in ms, acknowledged per second)."""
    reader, writer = await _open(port, "bench-load")
    count = int(rate * seconds)
    sent: dict[int, float] = {}
    latencies: list[float] = []

    async def acks() -> None:
        buffer = b""
        while len(latencies) < count:
            chunk = await reader.read(65536)
            if not chunk:
                raise SystemExit("the broker closed the connection")
            buffer += chunk
            pos = 0
            while True:
                ack, size = read(buffer, pos)
                if ack is None:
                    break
                pos += size
                if isinstance(ack, PubAck):
                    latencies.append((time.perf_counter() - sent.pop(ack.packet_id)) * 1000)
            buffer = buffer[pos:]

    reading = asyncio.create_task(acks())
    start = time.perf_counter()
    for index in range(count):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        topic, payload = _usage(index, "timed")
        packet_id = index % 65535 + 1
        sent[packet_id] = time.perf_counter()
        writer.write(encode_publish(topic, payload, qos=1, packet_id=packet_id))
    async with asyncio.timeout(120):
        await reading
    elapsed = time.perf_counter() - start
    writer.close()
    return latencies, count / elapsed


async def _save_stall_ms(port: int, proc: subprocess.Popen[bytes]) -> float:
    """How long one save blocks the broker: a QoS 1 heartbeat every millisecond while SIGUSR1 forces a
    save; the longest round trip (median over 3 saves)."""
    reader, writer = await _open(port, "bench-probe")
    stalls = []
    packet_id = 0
    for _ in range(3):
        longest = 0.0
        proc.send_signal(signal.SIGUSR1)
        until = time.perf_counter() + 1.0
        while time.perf_counter() < until:
            topic, payload = _usage(packet_id, "probe")
            packet_id = packet_id % 65535 + 1
            start = time.perf_counter()
            writer.write(encode_publish(topic, payload, qos=1, packet_id=packet_id))
            await _read_packet(reader)
            longest = max(longest, (time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.001)
        stalls.append(longest)
    writer.close()
    return statistics.median(stalls)


async def _one(directory: Path, setting: str, queued: int, rate: float, seconds: float) -> Run:
    with _mosquitto(directory, setting) as (port, proc):
        await _offline_session(port)
        if queued:
            await _raw_publish(port, [_usage(i, "queued") for i in range(queued)])
        log = directory / "mosquitto.log"
        saves_before = log.read_text(errors="replace").count("Saving in-memory database")
        latencies, acked = await _open_loop(port, rate, seconds)
        saves = log.read_text(errors="replace").count("Saving in-memory database") - saves_before
        save_ms = await _save_stall_ms(port, proc)
        await asyncio.sleep(0.5)
        db = directory / "data" / "mosquitto.db"
        size = db.stat().st_size / 1e6 if db.exists() else 0.0
    ordered = sorted(latencies)
    return Run(
        setting,
        queued,
        statistics.median(ordered),
        ordered[int(0.99 * (len(ordered) - 1))],
        ordered[-1],
        acked,
        saves,
        size,
        save_ms,
    )


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    """Print the figures; see the module docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queued", default="0,100000", help="messages waiting for the offline session")
    parser.add_argument("--rate", type=float, default=2000.0, help="QoS 1 messages per second, open loop")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--settings", default="1800,60,10,5,2,1,changes:1000")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds over all settings")
    args = parser.parse_args()
    settings = args.settings.split(",")
    print(f"load average {_loadavg()}; {os.cpu_count()} CPUs")
    print(
        f"{'autosave':>14} {'queued':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>8} {'acked/s':>8} "
        f"{'saves':>5} {'db MB':>6} {'save stall ms':>13}"
    )
    with tempfile.TemporaryDirectory(prefix="margins-persist-") as tmp:
        for round_ in range(args.repeat):
            for queued in (int(q) for q in args.queued.split(",")):
                for setting in settings:
                    run = asyncio.run(
                        _one(
                            Path(tmp) / f"{round_}-{queued}-{setting}",
                            setting,
                            queued,
                            args.rate,
                            args.seconds,
                        )
                    )
                    print(
                        f"{run.setting:>14} {run.queued:>8,} {run.p50_ms:>7.2f} {run.p99_ms:>7.2f} "
                        f"{run.max_ms:>8.1f} {run.acked_per_s:>8,.0f} {run.saves:>5} {run.db_mb:>6.1f} "
                        f"{run.save_ms:>13.1f}",
                        flush=True,
                    )
    print(f"load average {_loadavg()}")


if __name__ == "__main__":
    main()
