"""Run `margins` as a user does: with stderr on a terminal (a pseudo-terminal) or piped."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = 120  # a pseudo-terminal starts 0 columns wide, and a bar in 0 columns draws nothing


@dataclass(frozen=True, slots=True)
class Ran:
    returncode: int
    stdout: bytes
    stderr: bytes


def margins_on_terminal(*args: str, env: dict[str, str] | None = None) -> Ran:
    """`margins ARGS` with stderr on a pseudo-terminal (stdout piped, as in `margins ... > file`)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
    received: list[bytes] = []

    def drain() -> None:  # read as it comes: a full terminal buffer would block the command
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # the command closed its end (EIO on Linux)
                return
            if not data:
                return
            received.append(data)

    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "sim.cli", *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=_environment(env),
        )
    finally:
        os.close(terminal)
    reader = threading.Thread(target=drain)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=300)
    finally:
        reader.join(timeout=30)
        os.close(controller)
    return Ran(process.returncode, stdout, b"".join(received))


def margins_piped(*args: str, env: dict[str, str] | None = None) -> Ran:
    """`margins ARGS` with stdout and stderr both piped (CI, `2> log`)."""
    result = subprocess.run(
        [sys.executable, "-m", "sim.cli", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_environment(env),
        timeout=300,
    )
    return Ran(result.returncode, result.stdout, result.stderr)


def _environment(extra: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(extra or {})}
