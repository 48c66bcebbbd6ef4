"""The HTTP door's routes (Starlette): authorize, usage and status for applications that do not speak
MQTT 5, plus liveness, readiness and the OpenAPI schema.

Every /v1 request carries `Authorization: Bearer <token>`; the caps config holds the sha256 of each
application's token (`[http.apps.NAME] token_sha256`). A body is decided exactly as the same bytes
published on `margins/usage/<user>` or `margins/authorize/<user>` would be -- same decoding, same reason
names, same dead letter -- and answered only after the commit that made its effect durable.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from budget.errors import DoorClosed
from budget.mqtt.topics import AUTHORIZE_PREFIX, USAGE_PREFIX
from budget.service.door import Door
from budget.service.handler import Answer
from budget.service.http_schema import openapi_json
from budget.service.rejection import Rejection
from budget.service.throttle import LogThrottle

# Bodies up to this size are read and judged (over 64 KB: a `too_large` dead letter, as over MQTT, where
# the broker's message size limit bounds what arrives); bigger ones are refused unread and not stored.
MAX_HTTP_BODY = 1024 * 1024
MAX_USER_ID = 256
_json = msgspec.json.Encoder()


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """`body` as a JSON response (msgspec-encoded)."""
    return Response(_json.encode(body), status, headers, media_type="application/json")


def metrics_route(exposition: Callable[[], tuple[bytes, str]]) -> Route:
    """`GET /metrics`: Prometheus' text format from `exposition` (body, content type). No token: it holds
    totals and latencies, never a user id, and scrapers rarely carry one."""

    async def metrics(request: Request) -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    return Route("/metrics", metrics, methods=["GET"])


def _error(status: int, reason: str, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    return json_response({"reason": reason, "detail": detail}, status, headers)


class BearerTokens:
    """Which application a bearer token belongs to; the config holds each token's sha256, never the token."""

    def __init__(self, digests: Mapping[str, str]) -> None:
        self._apps = [(name, bytes.fromhex(digest)) for name, digest in digests.items()]

    def app_for(self, authorization: str | None) -> str | None:
        """The application whose token `authorization` ("Bearer <token>") carries, or None."""
        if authorization is None or authorization[:7].lower() != "bearer ":
            return None
        digest = hashlib.sha256(authorization[7:].strip().encode()).digest()
        found = None
        for name, known in self._apps:  # every one compared, in constant time: no early exit to time
            if hmac.compare_digest(digest, known):
                found = name
        return found


class _Routes:
    """The endpoints, bound to one enforcer (`door`) and its counters and log throttle."""

    def __init__(self, door: Door, tokens: BearerTokens, counters: Counter[str], throttle: LogThrottle):
        self.door = door
        self.tokens = tokens
        self.counters = counters
        self.throttle = throttle

    def unauthorized(self, request: Request) -> Response | None:
        """A 401 for a request without a known bearer token (counted, logged at most every 10 s)."""
        if self.tokens.app_for(request.headers.get("authorization")) is not None:
            return None
        self.counters["http_unauthorized"] += 1
        client = request.client.host if request.client is not None else "?"
        self.throttle.warning(
            "http unauthorized",
            "HTTP %s %s from %s: no valid bearer token",
            request.method,
            request.url.path,
            client,
        )
        detail = "missing or unknown bearer token (Authorization: Bearer <token>)"
        return _error(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})

    async def body(self, request: Request) -> bytes | None:
        """The request body, or None when it is over MAX_HTTP_BODY (not read further)."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_HTTP_BODY:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_HTTP_BODY:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def submit(self, request: Request, prefix: str) -> Answer | Response:
        refused = self.unauthorized(request)
        if refused is not None:
            return refused
        payload = await self.body(request)
        if payload is None:
            self.counters["http_too_large"] += 1
            return _error(413, "too_large", f"body over {MAX_HTTP_BODY:,} bytes; not read, not stored")
        try:
            return await self.door.submit(prefix, payload)
        except DoorClosed as closed:
            return _error(503, "not_ready", closed.reason)

    async def authorize(self, request: Request) -> Response:
        answer = await self.submit(request, AUTHORIZE_PREFIX)
        if isinstance(answer, Response):
            return answer
        if answer.rejection is not None:
            return _error(400, answer.rejection.reason, answer.rejection.detail)
        assert answer.reply is not None  # every decided authorization has its reply
        return Response(answer.reply, media_type="application/json")

    async def usage(self, request: Request) -> Response:
        answer = await self.submit(request, USAGE_PREFIX)
        if isinstance(answer, Response):
            return answer
        rejected = answer.rejection
        if rejected is not None and rejected.count >= rejected.items:
            return json_response(_rejected(rejected), 400)
        body: dict[str, object] = {"confirmed": answer.confirmed}
        if rejected is not None:
            body["rejected"] = _rejected(rejected)
        return json_response(body)

    async def user_status(self, request: Request) -> Response:
        refused = self.unauthorized(request)
        if refused is not None:
            return refused
        user_id: str = request.path_params["user_id"]
        if len(user_id) > MAX_USER_ID:
            return _error(400, "out_of_range", f"a user id has at most {MAX_USER_ID} characters")
        try:
            return Response(await self.door.settled_status(user_id), media_type="application/json")
        except DoorClosed as closed:
            return _error(503, "not_ready", closed.reason)

    async def healthz(self, request: Request) -> Response:
        return json_response({"alive": True})

    async def readyz(self, request: Request) -> Response:
        reason = self.door.readiness()
        if reason is None:
            return json_response({"ready": True})
        return json_response({"ready": False, "reason": reason}, 503)

    async def openapi(self, request: Request) -> Response:
        return Response(openapi_json(), media_type="application/json")


def _rejected(rejection: Rejection) -> dict[str, object]:
    return {"reason": rejection.reason, "detail": rejection.detail, "count": rejection.count}


def create_app(
    door: Door,
    http_apps: Mapping[str, str],
    counters: Counter[str],
    throttle: LogThrottle | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The door's ASGI app. `http_apps` maps each application to the sha256 (hex) of its bearer token;
    `extra_routes` are served beside the door's own (e.g. `Route("/metrics", metrics)`)."""
    routes = _Routes(
        door, BearerTokens(http_apps), counters, throttle or LogThrottle(logging.getLogger("margins.enforce"))
    )
    return Starlette(
        routes=[
            Route("/v1/authorize", routes.authorize, methods=["POST"]),
            Route("/v1/usage", routes.usage, methods=["POST"]),
            Route("/v1/users/{user_id}", routes.user_status, methods=["GET"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/readyz", routes.readyz, methods=["GET"]),
            Route("/openapi.json", routes.openapi, methods=["GET"]),
            *extra_routes,
        ]
    )
