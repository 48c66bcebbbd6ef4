"""What an application imports: authorize a model call against the user's cap, make it, report its usage.

```python
async with BudgetClient.connect("mqtt://127.0.0.1:1883", username="app", password=...) as budget:
    async with guard(budget, "alice", "gpt-4o", max_tokens=800, max_input_tokens=3000) as call:
        # call.model is the model to use: the cheaper one when the answer was "degrade"
        response = await openai.chat.completions.create(model=call.model, ...)
        call.record(response.usage)
```

`guard` raises BudgetDenied (user, model, reason, remaining_usd) on deny and AuthorizationTimeout when the
enforcer does not answer in time; on leaving, it reports the recorded usage with the reservation id, which
settles the reservation. A call that raised without recording usage is reported as an error with zero
tokens, so its reservation returns at once instead of waiting for its expiry.

Replies come over MQTT 5 (response topic + correlation data) to margins/replies/<client id>/, the only
place the shipped ACL lets this client read replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import aiomqtt
import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from budget.errors import AuthorizationTimeout, BudgetDenied, NotConnected, UsageCountsError
from budget.mqtt.broker import BrokerSettings
from budget.mqtt.topics import AUTHORIZE_PREFIX, REPLY_PREFIX, USAGE_PREFIX

__all__ = ["BudgetClient", "Grant", "GuardedCall", "guard", "usage_counts"]

DEFAULT_TIMEOUT_S = 2.0
_json = msgspec.json.Encoder()


class _Reply(msgspec.Struct, frozen=True):
    request_id: str | None
    decision: Literal["allow", "degrade", "deny"]
    model: str | None = None
    reservation_id: str | None = None
    remaining_usd: float | None = None
    reason: str = ""


_reply_decoder = msgspec.json.Decoder(_Reply)


@dataclass(frozen=True, slots=True)
class Grant:
    """An allow or degrade answer: call `model` (the cheaper one on degrade) under `reservation_id`."""

    request_id: str
    decision: Literal["allow", "degrade"]
    model: str
    reservation_id: str
    remaining_usd: float | None


def usage_counts(usage: Any) -> tuple[int, int, int]:
    """(input, cached input, output) tokens of an OpenAI-style usage object or dict.

    Chat Completions names them prompt_tokens / completion_tokens / prompt_tokens_details.cached_tokens;
    the Responses API input_tokens / output_tokens / input_tokens_details.cached_tokens. Both are accepted.
    """

    def get(obj: Any, name: str) -> Any:
        if obj is None:
            return None
        return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)

    prompt = get(usage, "prompt_tokens")
    details = get(usage, "prompt_tokens_details")
    if prompt is None:
        prompt = get(usage, "input_tokens")
        details = get(usage, "input_tokens_details")
    output = get(usage, "completion_tokens")
    if output is None:
        output = get(usage, "output_tokens")
    cached = get(details, "cached_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(output, int) or not isinstance(cached, int):
        raise UsageCountsError(usage)
    return prompt, cached, output


class BudgetClient:
    """One MQTT 5 connection of an application to margins; use `BudgetClient.connect(...)`."""

    def __init__(self, settings: BrokerSettings, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.reply_topic = f"{REPLY_PREFIX}{settings.client_id}"
        self._client: aiomqtt.Client | None = None
        self._pending: dict[str, asyncio.Future[_Reply]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def connect(
        cls,
        broker: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        client_id: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> BudgetClient:
        """A client for `mqtt://HOST:PORT`; enter it with `async with`."""
        settings = BrokerSettings.from_url(
            broker, tls_ca=tls_ca, client_id=client_id or f"app-{uuid.uuid4().hex[:12]}"
        )
        return cls(replace(settings, username=username, password=password), timeout_s)

    async def __aenter__(self) -> BudgetClient:
        s = self.settings
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=s.tls_context(),
            max_inflight_messages=1000,
        )
        client.pending_calls_threshold = 1_000_000
        await client.__aenter__()
        self._client = client
        await client.subscribe(f"{self.reply_topic}/#", qos=1)
        self._reader = asyncio.create_task(self._read_replies(client), name="margins-client-replies")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)
            self._client = None

    async def _read_replies(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                reply = _reply_decoder.decode(message.payload)
            except msgspec.DecodeError:
                continue
            future = self._pending.pop(reply.request_id or "", None)
            if future is not None and not future.done():
                future.set_result(reply)

    async def authorize(
        self,
        user_id: str,
        model: str,
        max_input_tokens: int,
        max_output_tokens: int,
        request_id: str | None = None,
    ) -> Grant:
        """Reserve the worst case of one call; raises BudgetDenied or AuthorizationTimeout."""
        client = self._connected()
        request_id = request_id or uuid.uuid4().hex
        body = {
            "request_id": request_id,
            "user_id": user_id,
            "model": model,
            "max_input_tokens": max_input_tokens,
            "max_output_tokens": max_output_tokens,
        }
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"{self.reply_topic}/{request_id}"
        props.CorrelationData = request_id.encode()
        future: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(self.timeout_s):
                await client.publish(
                    f"{AUTHORIZE_PREFIX}{user_id}", _json.encode(body), qos=1, properties=props
                )
                reply = await future
        except TimeoutError:
            raise AuthorizationTimeout(user_id, model, self.timeout_s) from None
        finally:
            self._pending.pop(request_id, None)
        if reply.decision == "deny" or reply.reservation_id is None or reply.model is None:
            raise BudgetDenied(user_id, model, reply.reason or "denied", reply.remaining_usd)
        return Grant(request_id, reply.decision, reply.model, reply.reservation_id, reply.remaining_usd)

    async def report(
        self,
        user_id: str,
        model: str,
        usage: Any,
        *,
        reservation_id: str | None = None,
        feature: str = "default",
        outcome: str = "ok",
        event_id: str | None = None,
        ts: datetime | None = None,
    ) -> str:
        """Report one call's usage (QoS 1: returns once the broker has it); returns its event id.

        Re-sending with the same `event_id` is safe: margins counts an event id once.
        """
        client = self._connected()
        prompt, cached, output = usage_counts(usage)
        event_id = event_id or uuid.uuid4().hex
        body = {
            "event_id": event_id,
            "user_id": user_id,
            "ts": (ts or datetime.now(UTC)).isoformat(),
            "model": model,
            "input_tokens": prompt,
            "cached_input_tokens": cached,
            "output_tokens": output,
            "feature": feature,
            "reservation_id": reservation_id,
            "outcome": outcome,
        }
        await client.publish(f"{USAGE_PREFIX}{user_id}", _json.encode(body), qos=1)
        return event_id

    def _connected(self) -> aiomqtt.Client:
        if self._client is None:
            raise NotConnected()
        return self._client


@dataclass(slots=True)
class GuardedCall:
    """Inside `guard`: the model to call (`model`; the cheaper one on degrade) and where usage goes."""

    user_id: str
    grant: Grant
    feature: str
    usage: Any = None
    outcome: str = "ok"
    event_id: str | None = field(default=None)

    @property
    def model(self) -> str:
        return self.grant.model

    @property
    def degraded(self) -> bool:
        return self.grant.decision == "degrade"

    def record(self, usage: Any, outcome: str = "ok") -> None:
        """The call's usage (OpenAI-style object or dict), reported when the guard exits."""
        usage_counts(usage)  # fail here, at the caller's line, not at exit
        self.usage, self.outcome = usage, outcome


@contextlib.asynccontextmanager
async def guard(
    client: BudgetClient,
    user_id: str,
    model: str,
    max_tokens: int,
    *,
    max_input_tokens: int,
    feature: str = "default",
) -> AsyncIterator[GuardedCall]:
    """Authorize one call (worst case: `max_input_tokens` in, `max_tokens` out), yield, report usage.

    Raises BudgetDenied on deny and AuthorizationTimeout without an answer, before the body runs.
    """
    grant = await client.authorize(user_id, model, max_input_tokens, max_tokens)
    call = GuardedCall(user_id=user_id, grant=grant, feature=feature)
    try:
        yield call
    except BaseException:
        if call.usage is None:
            call.usage, call.outcome = {"prompt_tokens": 0, "completion_tokens": 0}, "error"
        raise
    finally:
        if call.usage is None:  # the body never said what it spent: release the hold, spent nothing known
            call.usage, call.outcome = {"prompt_tokens": 0, "completion_tokens": 0}, "aborted"
        call.event_id = await client.report(
            user_id,
            grant.model,
            call.usage,
            reservation_id=grant.reservation_id,
            feature=feature,
            outcome=call.outcome,
        )
