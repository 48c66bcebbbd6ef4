"""The ledger's memory and speed at scale, beside the dict-based ledger it replaced, measured in one run:

    uv run python -m benchmarks.ledger [--users 1000000] [--events 10000000] [--commands 200000]
                                       [--repeat 1] [--baseline 2d76ece]

Each design runs in a fresh process (so its RSS is its own), the two interleaved `--repeat` times:

1. Apply `--events` usage events of `--users` users in one month (November 2026, in time order, as a
   replay of the store does), then report the process's RSS and the ledger's share of it (RSS after the
   apply less RSS before it, with numpy and the event types imported), and apply throughput.
2. Decide `--commands` new usage reports (each a new id: every one is looked up and missed) against the
   full ledger without applying them, then execute as many (decide and apply, the enforcer's path), and
   decide as many authorizations; all at 12:00 on 29 November.
   And time `users()`, the users whose status the enforcer republishes at start-up.
3. This design only: take a snapshot (`to_snapshot`, what blocks the event loop), encode it (a worker
   thread's part), decode it and restore a ledger from it.

The baseline is the ledger as of commit `--baseline` (the dict-based design: a Python set of event id
strings and a dict per user-month), read from git into a temporary package, so both run the same events.
Rates are per CPU second of the process (time.process_time), which a busy shared machine disturbs less
than wall time; apply is also given per wall second. Not a test: figures vary with the machine; compare
the two columns of one run.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OLD_FILES = (
    "budget/__init__.py",
    "budget/errors.py",
    "budget/domain/__init__.py",
    "budget/domain/commands.py",
    "budget/domain/config.py",
    "budget/domain/events.py",
    "budget/domain/expiry.py",
    "budget/domain/ledger.py",
    "budget/domain/prices.py",
    "budget/domain/prices.toml",
)
OLD_PACKAGE = "budget_baseline"
MONTH_START = datetime(2026, 11, 1, tzinfo=UTC)
MONTH = timedelta(days=30)
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-5-nano")
CHUNK = 100_000


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def extract_baseline(commit: str, into: Path) -> None:
    """The baseline's domain modules as package OLD_PACKAGE under `into` (imports renamed)."""
    for name in OLD_FILES:
        try:
            text = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{commit}:{name}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as error:
            sys.exit(f"cannot read {name} at {commit} from git in {ROOT}: {error}")
        target = into / name.replace("budget/", f"{OLD_PACKAGE}/", 1)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(re.sub(r"\bbudget\.(domain|errors)\b", rf"{OLD_PACKAGE}.\1", text))


# -- one design, in its own process --------------------------------------------------------------------


def modules(design: str) -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """(ledger, events, config, prices) of a design."""
    package = "budget" if design == "new" else OLD_PACKAGE
    return tuple(  # type: ignore[return-value]
        importlib.import_module(f"{package}.domain.{name}")
        for name in ("ledger", "events", "config", "prices")
    )


def event_ids(start: int, count: int) -> list[str]:
    """Distinct 32-character ids, like the UUIDs clients send."""
    return [f"{(i * 0x9E3779B97F4A7C15) % 2**64:016x}{i:016x}" for i in range(start, start + count)]


def usage_events(events_module: ModuleType, users: int, events: int, seed: int) -> Iterator[list[Any]]:
    """The month's usage events in time order, CHUNK at a time, as the enforcer stores them."""
    usage = events_module.UsageRecorded
    rng = np.random.default_rng(seed)
    step = MONTH / events
    for start in range(0, events, CHUNK):
        count = min(CHUNK, events - start)
        who = rng.integers(0, users, count).tolist()
        model = rng.integers(0, len(MODELS), count).tolist()
        tokens = rng.integers(100, 4000, count).tolist()
        ids = event_ids(start, count)
        yield [
            usage(
                event_id=ids[i],
                user_id=f"user-{who[i]:07d}",
                ts=MONTH_START + step * (start + i),
                model=MODELS[model[i]],
                input_tokens=tokens[i],
                output_tokens=tokens[i] // 4,
                cost_nanos=tokens[i] * 150,
                month="2026-11",
            )
            for i in range(count)
        ]


def run_design(design: str, users: int, events: int, commands: int) -> dict[str, Any]:
    ledger_module, events_module, config_module, prices_module = modules(design)
    config = config_module.EnforcerConfig.default()
    ledger = ledger_module.Ledger(config, prices_module.default_catalog())
    gc.collect()
    result: dict[str, Any] = {"design": design, "rss_before_mb": rss_mb()}
    applying = applying_wall = 0.0
    for chunk in usage_events(events_module, users, events, seed=1):
        started, started_wall = time.process_time(), time.perf_counter()
        for event in chunk:
            ledger.apply(event)
        applying += time.process_time() - started
        applying_wall += time.perf_counter() - started_wall
    del chunk
    gc.collect()
    result |= {
        "rss_after_mb": rss_mb(),
        "apply_per_s": events / applying,
        "apply_wall_per_s": events / applying_wall,
    }
    result["ledger_mb"] = result["rss_after_mb"] - result["rss_before_mb"]
    started = time.perf_counter()
    active = ledger.users()
    result["users_s"] = time.perf_counter() - started
    assert len(active) == len({f"user-{u:07d}" for u in range(users)} & active)
    del active
    result |= decide_rates(ledger_module, ledger, users, events, commands)
    result["peak_before_snapshots_mb"] = peak_rss_mb()
    if design == "new":
        result |= snapshot_times(ledger_module, ledger, config, prices_module.default_catalog(), events)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def decide_rates(
    ledger_module: ModuleType, ledger: Any, users: int, events: int, commands: int
) -> dict[str, float]:
    now = MONTH_START + timedelta(days=28, hours=12)  # late in the month, not within a day of its end
    rng = np.random.default_rng(2)
    who = rng.integers(0, users, 2 * commands).tolist()
    ids = event_ids(events, 2 * commands)

    def usage(i: int) -> Any:
        return ledger_module.RecordUsage(
            event_id=ids[i],
            user_id=f"user-{who[i]:07d}",
            ts=now,
            model="gpt-4o-mini",
            input_tokens=1000,
            output_tokens=200,
        )

    deciding = [usage(i) for i in range(commands)]
    started = time.process_time()
    for command in deciding:
        ledger.decide(command, now)
    decide = commands / (time.process_time() - started)
    executing = [usage(commands + i) for i in range(commands)]
    started = time.process_time()
    for command in executing:
        ledger.execute(command, now)
    execute = commands / (time.process_time() - started)
    requests = [
        ledger_module.Authorize(
            request_id=f"q{i}",
            user_id=f"user-{who[i]:07d}",
            model="gpt-4o-mini",
            max_input_tokens=1000,
            max_output_tokens=500,
        )
        for i in range(commands)
    ]
    started = time.process_time()
    for request in requests:
        ledger.decide(request, now)
    authorize = commands / (time.process_time() - started)
    return {"decide_per_s": decide, "execute_per_s": execute, "authorize_per_s": authorize}


def snapshot_times(
    ledger_module: ModuleType, ledger: Any, config: Any, prices: Any, seq: int
) -> dict[str, float]:
    taking = []
    for _ in range(5):
        started = time.perf_counter()
        snapshot = ledger.to_snapshot(seq)
        taking.append(time.perf_counter() - started)
    started = time.perf_counter()
    meta, parts = snapshot.encode()
    encoding = time.perf_counter() - started
    size = sum(part.nbytes for part in parts.values())
    started = time.perf_counter()
    decoded = ledger_module.LedgerSnapshot.decode(json.loads(json.dumps(meta)), parts)
    ledger_module.Ledger.from_snapshot(config, prices, decoded)
    restoring = time.perf_counter() - started
    return {
        "snapshot_take_ms": statistics.median(taking) * 1e3,
        "snapshot_take_max_ms": max(taking) * 1e3,
        "snapshot_encode_s": encoding,
        "snapshot_mb": size / 2**20,
        "snapshot_restore_s": restoring,
    }


# -- the parent: interleave, collect, print -------------------------------------------------------------


def child(design: str, args: argparse.Namespace, baseline_dir: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.ledger",
        "--child",
        design,
        "--users",
        str(args.users),
        "--events",
        str(args.events),
        "--commands",
        str(args.commands),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(baseline_dir), str(ROOT)])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"the {design} run failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


ROWS = (
    ("process RSS after the apply", "rss_after_mb", "{:,.0f} MB"),
    ("the ledger's share (RSS after - before)", "ledger_mb", "{:,.0f} MB"),
    ("peak RSS before the snapshot measures", "peak_before_snapshots_mb", "{:,.0f} MB"),
    ("peak RSS (with a second, restored ledger)", "peak_rss_mb", "{:,.0f} MB"),
    ("apply (replay), events per CPU second", "apply_per_s", "{:,.0f}"),
    ("apply (replay), events per wall second", "apply_wall_per_s", "{:,.0f}"),
    ("decide a new usage, per CPU second", "decide_per_s", "{:,.0f}"),
    ("execute a new usage (decide + apply), per CPU second", "execute_per_s", "{:,.0f}"),
    ("decide an authorization, per CPU second", "authorize_per_s", "{:,.0f}"),
    ("users() (every active user, for the start-up statuses)", "users_s", "{:,.2f} s"),
    ("to_snapshot (blocks the loop), median of 5", "snapshot_take_ms", "{:,.1f} ms"),
    ("to_snapshot, slowest of 5", "snapshot_take_max_ms", "{:,.1f} ms"),
    ("encode (a worker thread)", "snapshot_encode_s", "{:,.2f} s"),
    ("snapshot parts", "snapshot_mb", "{:,.0f} MB"),
    ("decode + from_snapshot", "snapshot_restore_s", "{:,.2f} s"),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--commands", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baseline", default="2d76ece")
    parser.add_argument("--child", choices=("new", "old"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_design(args.child, args.users, args.events, args.commands)))
        return
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}")
    print(f"{args.events:,} usage events of {args.users:,} users in one month; baseline {args.baseline}")
    runs: dict[str, list[dict[str, Any]]] = {"new": [], "old": []}
    with tempfile.TemporaryDirectory() as tmp:
        extract_baseline(args.baseline, Path(tmp))
        for round_ in range(args.repeat):
            for design in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                result = child(design, args, Path(tmp))
                runs[design].append(result)
                print(
                    f"  run {round_ + 1} {design}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in result.items() if k != "design")
                )
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")
    print()
    print(f"| measure (median of {args.repeat}) | this ledger | baseline ({args.baseline}) |")
    print("|---|---|---|")
    for label, key, form in ROWS:
        cells = []
        for design in ("new", "old"):
            values = [run[key] for run in runs[design] if key in run]
            cells.append(form.format(statistics.median(values)) if values else "-")
        print(f"| {label} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
