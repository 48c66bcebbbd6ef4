"""uvicorn serving the HTTP door as a task in the enforcer's own event loop: no thread, no second loop.

The socket is bound here, before serving, so an address in use is one clear error at start-up (uvicorn
itself would log it and call sys.exit). The enforcer owns SIGINT and SIGTERM: uvicorn's own signal
handling is turned off, and `stop` is called in the enforcer's orderly shutdown instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from budget.errors import ListenError
from budget.service.door import HttpSettings

log = logging.getLogger("margins.enforce")
GRACEFUL_S = 5  # how long a stop lets requests already answered finish sending


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the enforcer's signal handlers stay in place: it decides when the door closes


def bind(settings: HttpSettings) -> socket.socket:
    """A listening TCP socket on the settings' address; raises ListenError saying why not."""
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ListenError(settings.address, f"unknown host: {error}") from error
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as error:
        sock.close()
        raise ListenError(settings.address, f"cannot listen: {error.strerror or error}") from error
    sock.setblocking(False)
    return sock


class HttpServer:
    """The door's ASGI app on a bound socket; `start` returns once it accepts connections."""

    def __init__(self, app: ASGIApp, sock: socket.socket, host: str) -> None:
        self._sock = sock
        self._host = host
        config = uvicorn.Config(
            app,
            log_config=None,  # margins configures logging; uvicorn's lines go through it
            access_log=False,  # a line per request would cost more than the request
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_S,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose, for port 0)."""
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def task(self) -> asyncio.Task[None]:
        """The serving task (its failure is the enforcer's)."""
        assert self._task is not None
        return self._task

    async def start(self) -> None:
        """Serve in a task of this loop; return once listening."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="margins-http")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise ListenError(f"port {self.port}", "the HTTP server stopped at start-up")
            await asyncio.sleep(0.01)
        host = f"[{self._host}]" if ":" in self._host else self._host
        log.info("HTTP door listening on http://%s:%d", host, self.port)

    async def stop(self) -> None:
        """Stop accepting, let the answers already given go out (up to GRACEFUL_S), close."""
        if self._task is None or self._task.done():
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._task), timeout=GRACEFUL_S + 2)
        if not self._task.done():
            self._task.cancel()
