"""The enforcer's start-up and restart with a large store:

    uv run python -m benchmarks.enforcer_start [--users 1000000] [--events-per-user 1] [--store DIR]
                                               [--runs 3] [--tail 100000] [--republish]

Builds (or reuses, with --store) an event store holding `--events-per-user` usage events this month for
each of `--users` users (`--users 1000000 --events-per-user 10`: 10M events), starts a local mosquitto
with the shipped config, then starts the enforcer on it, each start in a fresh process, and times from
entering the Enforcer:

- restored: the store is open and the ledger caught up (snapshot + the events after it, or a full replay);
- ready: subscribed, the moment `margins enforce` logs "enforcer ready";
- answered: the first authorization, sent the moment it is ready, is answered;
- republished (with --republish): the retained status of every user active this month has gone out again
  (in the background, paced by the broker's receive maximum).

and the process's RSS once ready (steady: what it keeps) and at its peak. The starts, in order:

1. full replay: the store has no snapshot (the baseline; its clean stop writes the first snapshot);
2. from the snapshot, nothing after it (a restart after a clean stop), `--runs` times;
3. from the snapshot with `--tail` events after it (a crash just before the next snapshot was due: the
   enforcer snapshots every 100,000 events by default), `--runs` times.

The building is not timed. Not a test: figures vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.broker import mosquitto
from benchmarks.enforcer import BENCH_CAPS
from budget.domain.config import parse_config
from budget.domain.events import UsageRecorded
from budget.mqtt.broker import BrokerSettings
from budget.mqtt.connection import Mqtt5Connection
from budget.mqtt.packets import Publish
from budget.service.defaults import SNAPSHOT_EVERY_EVENTS
from budget.service.enforcer import Enforcer
from budget.store.event_store import EventStore

BATCH = 100_000
MIB = 1024 * 1024


def usage(i: int, round_: int, users: int, now: datetime) -> UsageRecorded:
    """The `round_`-th usage event of user `i % users` (one gpt-4o-mini call)."""
    return UsageRecorded(
        event_id=f"start-{round_}-{i}",
        user_id=f"user{i % users}",
        ts=now,
        model="gpt-4o-mini",
        input_tokens=900,
        output_tokens=250,
        cost_nanos=285_000,
        month=f"{now:%Y-%m}",
    )


def append_usage(path: Path, users: int, events: int, first_round: int = 0) -> None:
    """`events` usage events spread over `users` users, appended in big batches."""
    now = datetime.now(UTC)
    with EventStore.open(path, flush_interval=None) as store:
        for start in range(0, events, BATCH):
            batch = range(start, min(events, start + BATCH))
            store.append([usage(i, first_round + i // users, users, now) for i in batch])
            if (start // BATCH) % 10 == 9:
                store.flush()  # to Parquet: the store holds what is not flushed in memory
        store.flush()


async def measure(store: Path, broker_dir: Path, republish: bool) -> dict[str, float]:
    """Seconds from entering the Enforcer to each milestone (see the module docstring), and RSS."""
    with mosquitto(broker_dir) as port:
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        def on_reply(message: Publish) -> None:
            answers.put_nowait(message.payload)

        asker = await Mqtt5Connection.open("127.0.0.1", port, on_publish=on_reply, clean_start=True)
        await asker.subscribe(["margins/replies/bench/#"])
        config = parse_config(BENCH_CAPS, "(bench)")
        settings = BrokerSettings(host="127.0.0.1", port=port, client_id="bench-start", session_expiry_s=0)
        figures: dict[str, float] = {}
        start = time.perf_counter()
        async with Enforcer(settings, store, config) as enforcer:
            figures["restored"] = time.perf_counter() - start
            await enforcer.wait_subscribed(timeout=600)
            figures["ready"] = time.perf_counter() - start
            figures["rss_ready_mb"] = _rss_now_mb()
            body: dict[str, object] = {"request_id": "first", "user_id": "user7", "model": "gpt-4o-mini"}
            body |= {"max_input_tokens": 100, "max_output_tokens": 100, "reply_to": "margins/replies/bench/1"}
            asker.publish("margins/authorize/user7", json.dumps(body).encode())
            reply = json.loads(await asyncio.wait_for(answers.get(), 600))
            figures["answered"] = time.perf_counter() - start
            assert reply["decision"] == "allow", reply
            if republish:
                while enforcer.republishing:
                    await asyncio.sleep(0.01)
                figures["republished"] = time.perf_counter() - start
                figures["statuses"] = enforcer.counters["status_republished"]
            stopping = time.perf_counter()
        figures["stopped"] = time.perf_counter() - stopping  # includes the stop's snapshot
        await asker.disconnect()
    figures["rss_peak_mb"] = _status_mb("VmHWM")
    return figures


def _rss_now_mb() -> float:
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmHWM: the peak RSS of this program --
    unlike ru_maxrss, not inherited from the parent that forked it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def start_once(store: Path, republish: bool) -> dict[str, float]:
    """One start in a fresh process (so RSS is this start's alone); its figures."""
    args = [sys.executable, "-m", "benchmarks.enforcer_start", "--store", str(store), "--child"]
    args += ["--republish"] if republish else []
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"a start failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def describe(name: str, runs: list[dict[str, float]]) -> str:
    def median(key: str) -> str:
        values = [run[key] for run in runs]
        spread = f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""
        return f"{statistics.median(values):.1f}{spread}"

    line = (
        f"{name}: restored in {median('restored')} s, ready in {median('ready')} s, first authorization "
        f"answered at {median('answered')} s; RSS ready {median('rss_ready_mb')} MB, peak "
        f"{median('rss_peak_mb')} MB; the stop took {median('stopped')} s"
    )
    if "republished" in runs[0]:
        line += f"; {runs[0]['statuses']:,.0f} statuses republished by {median('republished')} s"
    return line + f" [{len(runs)} run{'s' if len(runs) > 1 else ''}]"


def main() -> None:
    """Print the figures; see the module docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events-per-user", type=int, default=1)
    parser.add_argument("--store", type=Path, default=None, help="reuse (or build once) the store here")
    parser.add_argument("--runs", type=int, default=3, help="starts from a snapshot, each kind")
    parser.add_argument(
        "--tail", type=int, default=SNAPSHOT_EVERY_EVENTS, help="events after the snapshot, start 3"
    )
    parser.add_argument("--republish", action="store_true", help="also wait for every status to go out")
    parser.add_argument(
        "--skip-full-replay", action="store_true", help="a store with a snapshot: only starts 2 and 3"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.setswitchinterval(0.001)  # as `margins enforce` does
    if args.child:
        with tempfile.TemporaryDirectory(prefix="margins-start-") as tmp:
            print(json.dumps(asyncio.run(measure(args.store, Path(tmp), args.republish))))
        return
    with tempfile.TemporaryDirectory(prefix="margins-start-") as tmp:
        store = args.store or Path(tmp) / "store"
        events = args.users * args.events_per_user
        if not (store / "manifest.json").exists():
            began = time.perf_counter()
            append_usage(store, args.users, events)
            took = time.perf_counter() - began
            print(f"built a store of {events:,} events of {args.users:,} users in {took:.0f} s (not timed)")
        print(f"load average {os.getloadavg()[0]:.1f}; {events:,} events of {args.users:,} users")
        if not args.skip_full_replay:
            shutil.rmtree(store / "snapshots", ignore_errors=True)
            print(describe("1. full replay (no snapshot)", [start_once(store, args.republish)]))
        warm = [start_once(store, args.republish) for _ in range(args.runs)]
        print(describe("2. from the snapshot, nothing after it", warm))
        append_usage(store, args.users, args.tail, first_round=args.events_per_user + 1)
        tail = []
        for _ in range(args.runs):  # each run's clean stop snapshots the tail: hide it again
            tail_run = store / "snapshots"
            newest = sorted(tail_run.iterdir())[-1] if tail_run.is_dir() else None
            tail.append(start_once(store, args.republish))
            if newest is not None:
                for path in sorted(tail_run.iterdir()):
                    if path.name > newest.name:
                        shutil.rmtree(path)
        print(describe(f"3. from the snapshot with {args.tail:,} events after it", tail))
        print(f"load average {os.getloadavg()[0]:.1f}; target: ready <= 5 s and steady RSS <= 500 MB")


if __name__ == "__main__":
    main()
