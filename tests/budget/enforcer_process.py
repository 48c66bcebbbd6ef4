"""`margins enforce` as a real subprocess against a test broker, and the caps file the enforcer's tests
run it under unless a test says otherwise."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.budget.broker import PASSWORDS, REPO, Broker

READY = "enforcer ready"  # the log line `margins enforce` writes once it is subscribed

CAPS_TOML = """\
default_cap_usd = "1.00"
soft_threshold_pct = 80
at_cap = "block"
reservation_ttl_s = 600

[plans.pro]
cap_usd = "50"
"""


STACKS_LIMIT_S = 10.0


def stopped_or_stacks(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
    """The exit code of `proc`, SIGTERMed, once it stops within `timeout`; if it does not, an
    AssertionError holding its log's tail with every thread's stack (SIGUSR1: `margins enforce` writes
    them with faulthandler, even with its event loop stuck) -- what it was doing instead of stopping."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + STACKS_LIMIT_S
        while "most recent call first" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.05)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-200:])
        raise AssertionError(f"margins enforce did not stop within {timeout}s of SIGTERM:\n{tail}") from None


@dataclass
class EnforcerProcess:
    """`margins enforce` as a subprocess; its log goes to a file so a full pipe never blocks it."""

    broker: Broker
    store: Path
    config: Path
    log: Path
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, timeout: float = 120.0, wait_ready: bool = True) -> None:
        """Start it; unless told not to, wait for its ready line (subscribed to the broker)."""
        self.starts += 1
        args = [
            str(Path(sys.executable).parent / "margins"), "enforce",
            "--broker", self.broker.url, "--store", str(self.store), "--config", str(self.config),
            *self.extra,
        ]  # fmt: skip
        if self.broker.secured:
            pw = self.log.parent / "enforcer.pw"
            pw.write_text(PASSWORDS["enforcer"] + "\n")
            args += ["--username", "enforcer", "--password-file", str(pw)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, cwd=REPO)
        if not wait_ready:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.read_text(errors="replace").count(READY) >= self.starts:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"margins enforce exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"margins enforce not ready in {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        code = stopped_or_stacks(self.proc, self.log, timeout)
        self.proc = None
        if code != 0:
            print(f"margins enforce exited with {code}:\n{self.tail()}")
        return code
