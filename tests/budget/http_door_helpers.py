"""The HTTP door for tests: a caps file with one application's token, `margins enforce --http` on a free
port, and an httpx2 client carrying the token."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx2

from tests.budget.broker import Broker, free_port
from tests.budget.enforcer_helpers import PATIENCE_S
from tests.budget.enforcer_process import CAPS_TOML, EnforcerProcess

TOKEN = "checkout-token-3f1c"
CAPS_WITH_DOOR = f"""{CAPS_TOML}
[http.apps.checkout]
token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
"""
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def door_process(broker: Broker, tmp_path: Path) -> tuple[EnforcerProcess, str]:
    """An unstarted `margins enforce --http` on a free loopback port, and the door's base URL."""
    caps = tmp_path / "caps-door.toml"
    caps.write_text(CAPS_WITH_DOOR)
    port = free_port()
    process = EnforcerProcess(
        broker, tmp_path / "store", caps, tmp_path / "enforcer.log", extra=["--http", f"127.0.0.1:{port}"]
    )
    return process, f"http://127.0.0.1:{port}"


def client(base_url: str) -> httpx2.Client:
    """A keep-alive client with the application's token and a generous timeout (a busy machine)."""
    return httpx2.Client(base_url=base_url, headers=AUTH, timeout=PATIENCE_S)


def wait_for(predicate: Any, what: str, timeout: float = PATIENCE_S) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.02)


def authorize_body(request_id: str, user: str, max_output_tokens: int = 400_000) -> dict[str, Any]:
    """gpt-4o-mini, 1,000 tokens in and `max_output_tokens` out (400,000: $0.24 of a $1.00 cap)."""
    return {
        "request_id": request_id,
        "user_id": user,
        "model": "gpt-4o-mini",
        "max_input_tokens": 1_000,
        "max_output_tokens": max_output_tokens,
    }
