"""Start-up benchmark: how long a `margins` process takes, beside the bare interpreter in the same run.

    uv run python -m benchmarks.startup [--repeat 5]

Each command runs `--repeat` times as a fresh process, interleaved with the others, in two ways: with the
bytecode the environment carries (README: `uv sync --locked --compile-bytecode` and `compileall` for
margins's own modules), and with none at all -- PYTHONPYCACHEPREFIX points at an empty directory, so
every module, the standard library too, is compiled from source as on a machine without .pyc files
(PYTHONDONTWRITEBYTECODE=1 keeps the directory empty). The baseline is `python -c pass`. `spend` reads a
small store (200k events over 3 months) built for the run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.spend_query import build_store

ROOT = Path(__file__).resolve().parents[1]
MARGINS = str(Path(sys.executable).with_name("margins"))


def commands(store: Path) -> dict[str, list[str]]:
    """What is timed: a label and its command line."""
    return {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "margins --help": [MARGINS, "--help"],
        "margins simulate --help": [MARGINS, "simulate", "--help"],
        "margins spend --help": [MARGINS, "spend", "--help"],
        "margins spend --top 100": [MARGINS, "spend", "--store", str(store), "--top", "100"],
        "margins simulate naive-mvp --mau 1000": [
            MARGINS,
            "simulate",
            "scenarios/seed-story/naive-mvp.toml",
            "--mau",
            "1000",
        ],
    }


def time_once(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one fresh process, which must succeed."""
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run(repeat: int) -> dict[str, tuple[float, float]]:
    """Median seconds per command: (with the installed bytecode, with no bytecode anywhere)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        build_store(store, 200_000, 3, datetime.now(UTC).strftime("%Y-%m"))
        empty = Path(tmp) / "no-pycache"
        empty.mkdir()
        installed = dict(os.environ)
        no_bytecode = {**os.environ, "PYTHONPYCACHEPREFIX": str(empty), "PYTHONDONTWRITEBYTECODE": "1"}
        timed = commands(store)
        times: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label in timed}
        for _ in range(repeat):
            for label, command in timed.items():
                times[label][0].append(time_once(command, installed))
                times[label][1].append(time_once(command, no_bytecode))
        assert not any(empty.iterdir()), "bytecode was written into the empty prefix"
    return {label: (statistics.median(a), statistics.median(b)) for label, (a, b) in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per command and way")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    medians = run(args.repeat)
    load_after = os.getloadavg()[0]
    print(f"median of {args.repeat} fresh processes; load average {load_before:.2f} -> {load_after:.2f}")
    print(f"{'command':<40}{'installed bytecode':>20}{'no bytecode':>14}")
    for label, (with_bytecode, without) in medians.items():
        print(f"{label:<40}{with_bytecode:>19.3f}s{without:>13.3f}s")


if __name__ == "__main__":
    main()
