"""A local HTTP receiver for `margins alerts`' tests: records every POST and answers as told -- accept,
fail the next N posts with a status (and a Retry-After), hold its answer until released, or be down."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.budget.broker import free_port


@dataclass
class Post:
    """One POST as received: its path, headers and JSON body."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # time.monotonic() when it arrived


@dataclass
class Receiver:
    """The receiver's state, shared with its handler threads; a test changes `failures` and `hold`."""

    port: int = field(default_factory=free_port)
    posts: list[Post] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)  # the status of each post, in order
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # the next posts' answers
    hold: threading.Event = field(default_factory=threading.Event)  # cleared: answer at once
    held: threading.Event = field(default_factory=threading.Event)  # set while a post waits on `hold`
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/margins?token=t0"

    def fail_next(self, count: int, status: int, headers: dict[str, str] | None = None) -> None:
        with self.lock:
            self.failures.extend([(status, headers or {})] * count)

    def accepted(self) -> list[Post]:
        with self.lock:
            return [p for p, status in zip(self.posts, self.answered, strict=False) if status == 200]

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [p.body for p in self.posts]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver: not {what or 'reached'} within {timeout}s: {self.bodies()}")
            time.sleep(0.02)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver.lock:
                    receiver.posts.append(Post(self.path, dict(self.headers.items()), body, time.monotonic()))
                    status, headers = receiver.failures.pop(0) if receiver.failures else (200, {})
                    holding = receiver.hold.is_set()
                if holding:
                    receiver.held.set()
                    while receiver.hold.is_set():
                        time.sleep(0.01)
                with receiver.lock:
                    receiver.answered.append(status)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the forwarder gave up on this post (its timeout) or was killed

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Down: connections to the port are refused until `start` again."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@contextmanager
def receiver() -> Iterator[Receiver]:
    handle = Receiver()
    handle.start()
    try:
        yield handle
    finally:
        handle.hold.clear()
        handle.stop()
