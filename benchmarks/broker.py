"""A local mosquitto for the benchmarks: the shipped config (deploy/mosquitto.conf.example), anonymous, on
a free loopback port, persisting into a directory of the benchmark's own."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def broker(
    directory: Path, settings: Mapping[str, str] = {}, extra: Sequence[str] = (), kill: bool = False
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """mosquitto with the shipped config, its lines replaced by `settings` (by key; "" drops one) and
    `extra` appended, on a free port, persisting into `directory`; yields (port, process) once it takes
    connections, and stops it on leaving (SIGKILL with `kill`, else SIGTERM)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise SystemExit("mosquitto is not installed (apt-get install -y mosquitto)")
    port = free_port()
    replaced = {
        "listener": f"listener {port} 127.0.0.1",
        "persistence_location": f"persistence_location {directory}/",
        "password_file": "",
        "acl_file": "",
        "allow_anonymous": "allow_anonymous true",
        "use_username_as_clientid": "",  # it refuses clients without a username
        **settings,
    }
    lines = [
        replaced.get(line.split(" ", 1)[0], line)
        for line in (DEPLOY / "mosquitto.conf.example").read_text().splitlines()
    ]
    lines += [*extra, f"user {getpass.getuser()}"]
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise SystemExit("mosquitto did not start")
            time.sleep(0.02)
        yield port, proc
    finally:
        proc.kill() if kill else proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def mosquitto(directory: Path) -> Iterator[int]:
    """`broker` with the shipped settings; yields its port."""
    with broker(directory) as (port, _):
        yield port
