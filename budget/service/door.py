"""The HTTP door's view of the enforcer: what a request may ask of it, and where the door listens.

No web framework here: `budget.service.enforcer` implements `Door` without importing one, so an enforcer
run without `--http` never loads Starlette or uvicorn (budget.service.http_app and http_server do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from budget.errors import ListenError

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from budget.service.handler import Answer


class Door(Protocol):
    """What the HTTP door asks of the enforcer; every answer waits for the durable commit it depends on."""

    def readiness(self) -> str | None:
        """None when replayed and subscribed to the broker, else why not."""

    async def submit(self, prefix: str, payload: bytes) -> Answer:
        """Decide a usage or authorization body as if published on `prefix` + its user, and return what
        its sender is told once the batch holding it is durable. Raises DoorClosed."""

    async def settled_status(self, user_id: str) -> bytes:
        """The user's status JSON, once nothing of theirs is waiting for a commit. Raises DoorClosed."""


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Where the HTTP door listens, and routes to serve beside its own (a `/metrics`, say)."""

    host: str
    port: int
    extra_routes: Sequence[BaseRoute] = ()

    @property
    def address(self) -> str:
        """HOST:PORT as given (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, address: str) -> HttpSettings:
        """`HOST:PORT` (`[::1]:8080` for IPv6) -> settings; raises ListenError naming what is wrong."""
        host, sep, port = address.rpartition(":")
        if not sep or not host:
            raise ListenError(address, "expected HOST:PORT, e.g. 127.0.0.1:8080")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ListenError(address, f"port {port!r} is not a number from 0 (any free port) to 65535")
        return cls(host=host, port=int(port))
