"""A real mosquitto for the enforcer's tests: on a free loopback port, configured from the shipped example
(deploy/mosquitto.conf.example and its ACL), anonymous or with the password scheme, restartable on the same
port. Every wait is bounded -- generously: each returns as soon as its condition holds, so a busy machine
costs time, not a failure."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONF_EXAMPLE = REPO / "deploy" / "mosquitto.conf.example"
ACL_EXAMPLE = REPO / "deploy" / "mosquitto.acl.example"
PASSWORDS = {
    "app": "app-secret",
    "admin": "admin-secret",
    "enforcer": "enforcer-secret",
    "alerts": "alerts-secret",
}


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    return found


START_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0, alive: subprocess.Popen[bytes] | None = None) -> None:
    """Until something accepts connections on `port`; TimeoutError after `timeout`, ProcessLookupError as
    soon as the process `alive` (the one that should listen) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise ProcessLookupError(f"the process for 127.0.0.1:{port} exited with {alive.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing accepted connections on 127.0.0.1:{port} within {timeout}s")


@dataclass
class Broker:
    """A mosquitto process with a config written into its own directory; restartable on the same port."""

    directory: Path
    secured: bool
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # config lines to change (e.g. max_inflight_messages) and the ACL when secured (default: the example's)
    settings: dict[str, str] = field(default_factory=dict)
    acl: str | None = None
    started: bool = False  # once it has listened, it keeps its port (clients reconnect to it)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        # The shipped example, with this test's port and paths: the tests exercise the config users copy.
        lines = []
        for line in CONF_EXAMPLE.read_text().splitlines():
            key = line.split(" ", 1)[0]
            if key == "listener":
                line = f"listener {self.port} 127.0.0.1"
            elif key == "persistence_location":
                line = f"persistence_location {self.directory / 'data'}/"
            elif key == "password_file":
                line = f"password_file {self.directory / 'passwd'}" if self.secured else ""
            elif key == "acl_file":
                line = f"acl_file {self.directory / 'acl'}" if self.secured else ""
            elif key == "allow_anonymous" and not self.secured:
                line = "allow_anonymous true"
            elif key == "use_username_as_clientid" and not self.secured:
                line = ""  # it refuses clients without a username
            elif key in self.settings:
                line = f"{key} {self.settings[key]}"
            lines.append(line)
        present = {line.split(" ", 1)[0] for line in lines}
        lines += [f"{key} {value}" for key, value in self.settings.items() if key not in present]
        # stderr, which C does not buffer, into mosquitto.log (see start): a log file would show a line
        # only once a 4 KB buffer fills, too late for a test that counts the broker's connections
        lines.append("log_dest stderr")
        # Started as root, mosquitto switches to user "mosquitto", which cannot write this test's directory
        # (no persistence database, so a restart would lose the queue): stay the user we are.
        lines.append(f"user {getpass.getuser()}")
        conf = self.directory / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        if self.secured:
            passwd = self.directory / "passwd"
            passwd.write_text("")
            for user, password in PASSWORDS.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
            (self.directory / "acl").write_text(ACL_EXAMPLE.read_text() if self.acl is None else self.acl)
            os.chmod(passwd, 0o600)
            os.chmod(self.directory / "acl", 0o600)
        return conf

    def start(self) -> None:
        """Start mosquitto and wait until it listens. Its first start takes a fresh port when the one
        `free_port` found was taken before mosquitto bound it (it exits then); a restart keeps its port."""
        for _attempt in range(START_ATTEMPTS):
            conf = self.write_config()
            with (self.directory / "mosquitto.log").open("ab") as log:
                self.proc = subprocess.Popen(
                    [mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log
                )
            try:
                wait_for_port(self.port, alive=self.proc)
            except TimeoutError:
                self.kill()
                raise
            except ProcessLookupError:  # it exited: the port was taken
                self.proc = None
                if self.started:
                    raise RuntimeError(f"mosquitto could not listen on {self.port} again") from None
                self.port = free_port()
                continue
            self.started = True
            return
        raise RuntimeError(f"mosquitto did not start in {START_ATTEMPTS} attempts (ports taken)")

    def stop(self) -> None:
        """A clean shutdown: mosquitto writes its persistence database on SIGTERM."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def connections(self, client_id: str) -> int:
        """How many times a client with this id connected, by the broker's own log."""
        log = self.directory / "mosquitto.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return sum(
            1 for line in text.splitlines() if "New client connected" in line and f" as {client_id} " in line
        )
