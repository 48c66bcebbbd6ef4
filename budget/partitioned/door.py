"""A partitioned enforcer's HTTP door: `/metrics` (budget.partitioned.metrics), `/healthz` and `/readyz`.

The single-broker door's /v1 routes are not served here: an authorization must be decided by its
partition's owner, which another enforcer may be, so applications of a cluster publish over MQTT or NATS
(README, "Scaling out"); a /v1 request is answered 404 saying so. Starlette and uvicorn are imported only
when --http is given.
"""

from __future__ import annotations

from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from budget.partitioned.metrics import ClusterMetrics, Partitioned
from budget.service.door import HttpSettings
from budget.service.http_app import json_response, metrics_route
from budget.service.http_server import HttpServer, bind

NOT_SERVED = (
    "a partitioned enforcer (--nats) serves /metrics, /healthz and /readyz only: publish usage and "
    "authorizations over MQTT or NATS, where the partition's owner decides them"
)


class Ready(Partitioned, Protocol):
    """A partitioned enforcer that can say whether it is ready."""

    def readiness(self) -> str | None:
        """None when connected to the cluster and contending, else why not."""


def create_app(enforcer: Ready) -> Starlette:
    """The door's ASGI app for `enforcer`."""

    async def healthz(request: Request) -> Response:
        return json_response({"alive": True})

    async def readyz(request: Request) -> Response:
        reason = enforcer.readiness()
        held = len(enforcer.owned)
        if reason is None:
            return json_response({"ready": True, "partitions_held": held})
        return json_response({"ready": False, "reason": reason, "partitions_held": held}, 503)

    async def not_served(request: Request) -> Response:
        return json_response({"reason": "not_served", "detail": NOT_SERVED}, 404)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            metrics_route(ClusterMetrics(enforcer).exposition),
            Route("/v1/{rest:path}", not_served, methods=["GET", "POST"]),
        ]
    )


async def open_door(enforcer: Ready, settings: HttpSettings) -> HttpServer:
    """Bind `settings`' address (ListenError when it cannot be) and serve the door on this event loop."""
    server = HttpServer(create_app(enforcer), bind(settings), settings.host)
    await server.start()
    return server
