"""The enforcer's start-up with many users in its store:

    uv run python -m benchmarks.enforcer_start [--users 1000000] [--store DIR]

Builds (or reuses, with --store) an event store holding one usage event this month for each of `--users`
users, starts a local mosquitto with the shipped config, then times, from entering the Enforcer:

- replayed: the store is open and replayed into the ledger;
- ready: subscribed, the moment `margins enforce` logs "enforcer ready";
- answered: the first authorization, sent the moment it is ready, is answered;
- republished: the retained status of every user active this month has gone out again (in the background,
  paced by the broker's receive maximum).

The building is not timed. Not a test: figures vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.enforcer import BENCH_CAPS, mosquitto
from budget.domain.config import parse_config
from budget.domain.events import UsageRecorded
from budget.mqtt.broker import BrokerSettings
from budget.mqtt.connection import Mqtt5Connection
from budget.mqtt.packets import Publish
from budget.service.enforcer import Enforcer
from budget.store.event_store import EventStore

BATCH = 100_000


def build_store(path: Path, users: int) -> None:
    """One gpt-4o-mini usage event this month for each of `users` users, appended in big batches."""
    now = datetime.now(UTC)
    with EventStore.open(path, flush_interval=None) as store:
        for start in range(0, users, BATCH):
            store.append(
                [
                    UsageRecorded(
                        event_id=f"start-{i}",
                        user_id=f"user{i}",
                        ts=now,
                        model="gpt-4o-mini",
                        input_tokens=900,
                        output_tokens=250,
                        cost_nanos=285_000,
                        month=f"{now:%Y-%m}",
                    )
                    for i in range(start, min(users, start + BATCH))
                ]
            )
        store.flush()


async def measure(store: Path, broker_dir: Path) -> dict[str, float]:
    """Seconds from entering the Enforcer to each milestone (see the module docstring)."""
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
            figures["replayed"] = time.perf_counter() - start
            await enforcer.wait_subscribed(timeout=600)
            figures["ready"] = time.perf_counter() - start
            body: dict[str, object] = {"request_id": "first", "user_id": "user7", "model": "gpt-4o-mini"}
            body |= {"max_input_tokens": 100, "max_output_tokens": 100, "reply_to": "margins/replies/bench/1"}
            asker.publish("margins/authorize/user7", json.dumps(body).encode())
            reply = json.loads(await asyncio.wait_for(answers.get(), 600))
            figures["answered"] = time.perf_counter() - start
            figures["republishing_when_answered"] = float(enforcer.republishing)
            while enforcer.republishing:
                await asyncio.sleep(0.01)
            figures["republished"] = time.perf_counter() - start
            figures["statuses"] = enforcer.counters["status_republished"]
            assert reply["decision"] == "allow", reply
        await asker.disconnect()
        return figures


def main() -> None:
    """Print the figures; see the module docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--store", type=Path, default=None, help="reuse (or build once) the store here")
    args = parser.parse_args()
    sys.setswitchinterval(0.001)  # as `margins enforce` does
    with tempfile.TemporaryDirectory(prefix="margins-start-") as tmp:
        store = args.store or Path(tmp) / "store"
        if not (store / "manifest.json").exists():
            began = time.perf_counter()
            build_store(store, args.users)
            built = time.perf_counter() - began
            print(f"built a store of {args.users:,} users in {built:.1f} s (not timed below)")
        (Path(tmp) / "broker").mkdir()
        figures = asyncio.run(measure(store, Path(tmp) / "broker"))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.users:,} users: replayed in {figures['replayed']:.1f} s, ready in {figures['ready']:.1f} s, "
        f"first authorization answered at {figures['answered']:.1f} s "
        f"({'while' if figures['republishing_when_answered'] else 'after'} statuses were going out), "
        f"{figures['statuses']:,.0f} statuses republished by {figures['republished']:.1f} s; "
        f"peak RSS {rss_mb:,.0f} MB; target ready < 10 s "
        f"({'met' if figures['ready'] < 10 else 'missed'})"
    )


if __name__ == "__main__":
    main()
