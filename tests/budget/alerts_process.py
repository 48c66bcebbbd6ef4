"""`margins alerts` as a real subprocess against a test broker and a test webhook."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.budget.broker import REPO

READY = "alerts ready"  # the log line `margins alerts` writes once it is subscribed


@dataclass
class AlertsProcess:
    """`margins alerts --webhook URL --broker URL --state DIR`; its log goes to a file."""

    webhook: str
    broker_url: str
    state: Path
    log: Path
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, timeout: float = 120.0, broker_url: str | None = None) -> None:
        self.starts += 1
        args = [
            str(Path(sys.executable).parent / "margins"), "alerts", "--webhook", self.webhook,
            "--broker", broker_url or self.broker_url, "--state", str(self.state), "--timeout", "30",
            *self.extra,
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, cwd=REPO)
        self.wait_for_log(READY, self.starts, timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, line: str, count: int = 1, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(line) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"margins alerts exited with {self.proc.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {count} x {line!r} from margins alerts in {timeout}s:\n{self.text()}")
            time.sleep(0.02)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None
