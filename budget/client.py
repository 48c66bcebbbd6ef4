"""What an application imports: authorize a model call against the user's cap, make it, report its usage.

```python
budget = BudgetClient.connect("mqtt://127.0.0.1:1883", username="app-1", password=..., outbox="usage.db")
async with budget:
    async with guard(budget, "alice", "gpt-4o", max_tokens=800, max_input_tokens=3000) as call:
        # call.model is the model to use: the cheaper one when the answer was "degrade"
        response = await openai.chat.completions.create(model=call.model, ...)
        call.record(response.usage)
```

`guard` raises BudgetDenied (user, model, reason, remaining_usd) on deny and AuthorizationTimeout when no
answer comes in time (AuthorizationExpired when the enforcer got the request only after its deadline), in
both cases before the body runs. While the body runs it renews the reservation, so a call longer than the
enforcer's reservation TTL keeps its hold. On leaving, it reports the recorded usage with the reservation
id, which settles the reservation; a body that raised without recording usage is reported as an error with
zero tokens, so its reservation returns at once. Once the body has succeeded, guard never raises because
reporting failed: the report waits in the outbox.

The client survives the broker: it reconnects by itself with backoff and subscribes again; `authorize`
waits for a connection within its timeout (and repeats its request on a new connection: a repeated request
id never reserves twice, the enforcer answers it with the reservation it already holds). Every usage
report goes into the outbox before `report` returns and stays there until the enforcer confirms its event
id (after the commit that made it durable); unconfirmed reports are sent again on every new connection
and, with backoff, while they stay unconfirmed. Without `outbox=PATH` the outbox is in memory: reports
survive broker restarts and reconnects but not this process. With a path it is an SQLite file (fsync'd
before `report` returns), and the next process that opens it re-sends what this one left.

Answers come over MQTT 5 (response topic + correlation data) to margins/replies/<client id>/authorize and
confirmations to margins/replies/<client id>/confirm: under the only topics the shipped ACL lets it read. The
client id defaults to the username, which is what a broker with `use_username_as_clientid` (the shipped
config) makes it anyway. Public methods raise only budget.errors exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from budget.errors import (
    AuthorizationExpired,
    AuthorizationTimeout,
    BrokerUnavailable,
    BudgetDenied,
    BudgetError,
    NotConnected,
    UsageCountsError,
)
from budget.mqtt.broker import BrokerSettings
from budget.mqtt.reconnecting import ReconnectingClient
from budget.mqtt.topics import AUTHORIZE_PREFIX, RENEW_PREFIX, REPLY_PREFIX, USAGE_PREFIX
from budget.outbox import Outbox, PendingReport

__all__ = ["BudgetClient", "Grant", "GuardedCall", "guard", "usage_counts"]

log = logging.getLogger("margins.client")

DEFAULT_TIMEOUT_S = 2.0
RENEW_EVERY_S = 60.0  # when the enforcer's reply does not say when the reservation expires
MIN_RENEW_EVERY_S = 1.0
RESEND_AFTER_S = 30.0  # an unconfirmed report is sent again after this, then after twice as long, ...
MAX_RESEND_AFTER_S = 600.0
DRAIN_TIMEOUT_S = 5.0  # leaving `async with` waits this long for the last confirmations
SEND_WINDOW = 100  # usage reports awaiting the broker's acknowledgement at once
REPORT_PUBLISH_TIMEOUT_S = 10.0
_json = msgspec.json.Encoder()


class _Reply(msgspec.Struct, frozen=True):
    request_id: str | None
    decision: Literal["allow", "degrade", "deny", "expired"]
    model: str | None = None
    reservation_id: str | None = None
    remaining_usd: float | None = None
    reason: str = ""
    expires_at: datetime | None = None


class _Confirmation(msgspec.Struct, frozen=True):
    confirmed: list[str]


_reply_decoder = msgspec.json.Decoder(_Reply)
_confirmation_decoder = msgspec.json.Decoder(_Confirmation)


@dataclass(frozen=True, slots=True)
class Grant:
    """An allow or degrade answer: call `model` (the cheaper one on degrade) under `reservation_id`,
    which the enforcer holds until `expires_at` unless renewed (None: the enforcer did not say)."""

    request_id: str
    decision: Literal["allow", "degrade"]
    model: str
    reservation_id: str
    remaining_usd: float | None
    expires_at: datetime | None = None

    def renew_every_s(self, now: datetime | None = None) -> float:
        """How often to renew the reservation while the call runs: a third of the time left until
        `expires_at` (so two renewals can be lost before it lapses), at least 1 s; 60 s when unknown."""
        if self.expires_at is None:
            return RENEW_EVERY_S
        expires_at = self.expires_at if self.expires_at.tzinfo else self.expires_at.replace(tzinfo=UTC)
        left = (expires_at - (now or datetime.now(UTC))).total_seconds()
        return max(MIN_RENEW_EVERY_S, left / 3)


def usage_counts(usage: Any) -> tuple[int, int, int]:
    """(input, cached input, output) tokens of an OpenAI-style usage object or dict.

    Chat Completions names them prompt_tokens / completion_tokens / prompt_tokens_details.cached_tokens;
    the Responses API input_tokens / output_tokens / input_tokens_details.cached_tokens. Both are accepted,
    and so is Anthropic's usage, whose input_tokens leave out cache_read_input_tokens and
    cache_creation_input_tokens: margins counts all three as input, the reads as cached input.
    """
    read, written = _get(usage, "cache_read_input_tokens"), _get(usage, "cache_creation_input_tokens")
    if read is not None or written is not None:  # Anthropic's shape
        fresh, output = _get(usage, "input_tokens"), _get(usage, "output_tokens")
        counts = (fresh, read or 0, written or 0, output)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
            raise UsageCountsError(usage)
        return fresh + (read or 0) + (written or 0), read or 0, output
    get = _get
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


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _cache_write_count(usage: Any) -> int:
    """Prompt tokens a usage object or dict says were written to the provider's prompt cache, under
    margins' own name `cache_write_tokens` or Anthropic's `cache_creation_input_tokens` (0 when absent):
    Anthropic bills them above the input price. They are part of the input count, as cached tokens are."""
    value = _get(usage, "cache_write_tokens")
    value = _get(usage, "cache_creation_input_tokens") if value is None else value
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageCountsError(usage)
    return value


class BudgetClient:
    """An application's connection to margins, kept up by itself; use `BudgetClient.connect(...)`."""

    def __init__(
        self,
        settings: BrokerSettings,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        outbox: str | Path | None = None,
        resend_after_s: float = RESEND_AFTER_S,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.outbox_path = None if outbox is None else Path(outbox)
        self.resend_after_s = resend_after_s
        self.drain_timeout_s = drain_timeout_s
        self.reply_topic = f"{REPLY_PREFIX}{settings.client_id}"
        self.answer_topic = f"{self.reply_topic}/authorize"  # answers, told apart by their request id
        self.confirm_topic = f"{self.reply_topic}/confirm"
        self._pending: dict[str, asyncio.Future[_Reply]] = {}
        self._outbox: Outbox | None = None
        self._link: ReconnectingClient | None = None
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

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
        outbox: str | Path | None = None,
        resend_after_s: float = RESEND_AFTER_S,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
    ) -> BudgetClient:
        """A client for `mqtt://HOST:PORT` (or `mqtts://`); enter it with `async with`.

        `timeout_s` bounds each authorization; `outbox=PATH` keeps usage reports in an SQLite file until the
        enforcer confirms them (default: in memory); `client_id` defaults to the username, else a random id.
        """
        settings = BrokerSettings.from_url(
            broker, tls_ca=tls_ca, client_id=client_id or username or f"app-{uuid.uuid4().hex[:12]}"
        )
        return cls(
            replace(settings, username=username, password=password),
            timeout_s,
            outbox=outbox,
            resend_after_s=resend_after_s,
            drain_timeout_s=drain_timeout_s,
        )

    async def __aenter__(self) -> BudgetClient:
        """Open the outbox and connect (an unreachable broker is retried in the background).

        Raises OutboxError if the outbox file cannot be used, BrokerRefused if the broker refuses these
        credentials or this client id, BrokerError if the TLS CA file cannot be loaded."""
        self._outbox = await Outbox.open(self.outbox_path)
        self._link = ReconnectingClient(
            self.settings, (f"{self.reply_topic}/#",), self._on_message, self._on_connected
        )
        try:
            await self._link.start(timeout_s=max(self.timeout_s, 5.0))
        except BudgetError:
            await self._outbox.close()
            self._outbox = self._link = None
            raise
        self._sender = asyncio.create_task(self._send_reports(), name="margins-client-outbox")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Wait up to `drain_timeout_s` for the last confirmations, then disconnect and close the outbox."""
        outbox, link = self._outbox, self._link
        if outbox is None or link is None:
            return
        if len(outbox):
            await self.flush(self.drain_timeout_s)
        tasks = [t for t in (self._sender, *self._sending) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await link.stop()
        await outbox.close()
        self._outbox = self._link = self._sender = None
        if left := outbox.pending():
            at_broker = sum(1 for report in left if report.sends)
            where = (
                f"kept in {outbox.path}; the next client to open it sends them again"
                if outbox.path is not None
                else f"the broker acknowledged {at_broker}; the rest are lost with this process"
            )
            log.warning("%d usage reports not confirmed by the enforcer: %s", len(left), where)

    @property
    def unconfirmed(self) -> int:
        """Usage reports the enforcer has not confirmed yet."""
        return 0 if self._outbox is None else len(self._outbox)

    async def flush(self, timeout_s: float | None = None) -> int:
        """Wait until the enforcer has confirmed every usage report, or `timeout_s` passed (None: no
        limit); returns how many are still unconfirmed."""
        outbox = self._started()[1]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while len(outbox):
                    outbox.changed.clear()
                    await outbox.changed.wait()
        return len(outbox)

    async def authorize(
        self,
        user_id: str,
        model: str,
        max_input_tokens: int,
        max_output_tokens: int,
        request_id: str | None = None,
    ) -> Grant:
        """Reserve the worst case of one call; raises BudgetDenied, or AuthorizationTimeout when no answer
        comes within `timeout_s` (AuthorizationExpired: the enforcer got the request after that).

        The request carries its deadline (`expires_at` and the MQTT message expiry), so a request that waits
        in the broker while the enforcer is down is dropped or answered "expired", never granted late.
        """
        link = self._started()[0]
        request_id = request_id or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        expires_at = datetime.now(UTC) + timedelta(seconds=self.timeout_s)
        body = {
            "request_id": request_id,
            "user_id": user_id,
            "model": model,
            "max_input_tokens": max_input_tokens,
            "max_output_tokens": max_output_tokens,
            "expires_at": expires_at.isoformat(),
        }
        future: asyncio.Future[_Reply] = loop.create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout_at(deadline):
                topic = f"{AUTHORIZE_PREFIX}{user_id}"
                reply = await self._ask(link, topic, _json.encode(body), request_id, future, deadline)
        except (TimeoutError, BrokerUnavailable):
            raise AuthorizationTimeout(user_id, model, self.timeout_s) from None
        finally:
            self._pending.pop(request_id, None)
        if reply.decision == "expired":
            raise AuthorizationExpired(user_id, model, self.timeout_s)
        if reply.decision == "deny" or reply.reservation_id is None or reply.model is None:
            raise BudgetDenied(user_id, model, reply.reason or "denied", reply.remaining_usd)
        return Grant(
            request_id,
            reply.decision,
            reply.model,
            reply.reservation_id,
            reply.remaining_usd,
            reply.expires_at,
        )

    async def _ask(
        self,
        link: ReconnectingClient,
        topic: str,
        payload: bytes,
        request_id: str,
        answer: asyncio.Future[_Reply],
        deadline: float,
    ) -> _Reply:
        """Publish a request and wait for its answer; publish it again on each new connection until the
        answer comes (a reply sent while the connection was down is lost with it)."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = self.answer_topic
            props.CorrelationData = request_id.encode()
            # The broker drops the request once the caller has given up (whole seconds, rounded up).
            props.MessageExpiryInterval = max(1, math.ceil(remaining))
            connection = await link.publish(topic, payload, properties=props, timeout_s=remaining)
            dropped: asyncio.Future[Any] = asyncio.ensure_future(link.wait_down(connection))
            try:
                await asyncio.wait([answer, dropped], return_when=asyncio.FIRST_COMPLETED)
            finally:
                dropped.cancel()
            if answer.done():
                return answer.result()

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
        """Report one call's usage; returns its event id once the report is in the outbox (on disk with
        `outbox=PATH`). It is published in the background and re-sent until the enforcer confirms it.

        Reporting the same `event_id` again is safe: margins counts an event id once (the first report
        wins). Raises UsageCountsError for usage without token counts, OutboxError if the outbox file
        cannot be written (the report is then kept in memory and still sent). A `cache_write_tokens` count
        in `usage` (margins' name for prompt tokens written to the provider's cache) is reported with it.
        """
        outbox = self._started()[1]
        prompt, cached, output = usage_counts(usage)
        cache_write = _cache_write_count(usage)
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
        if cache_write:  # absent when 0, so a report without cache writes reads as it always did
            body["cache_write_tokens"] = cache_write
        try:
            await outbox.add(event_id, f"{USAGE_PREFIX}{user_id}", _json.encode(body))
        finally:
            self._wake.set()
        return event_id

    async def renew(self, user_id: str, reservation_id: str, *, timeout_s: float | None = None) -> None:
        """Keep a running call's reservation open another reservation TTL (`guard` does this by itself).

        Returns once the broker has the renewal; raises BrokerUnavailable when that takes longer than
        `timeout_s` (default: the client's timeout). Renewing a settled or expired reservation does nothing.
        """
        link = self._started()[0]
        body = _json.encode({"reservation_id": reservation_id, "user_id": user_id})
        await link.publish(f"{RENEW_PREFIX}{user_id}", body, timeout_s=timeout_s or self.timeout_s)

    def _started(self) -> tuple[ReconnectingClient, Outbox]:
        if self._link is None or self._outbox is None:
            raise NotConnected()
        return self._link, self._outbox

    # -- what arrives -----------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.confirm_topic:
            try:
                confirmation = _confirmation_decoder.decode(payload)
            except msgspec.DecodeError:
                log.warning(
                    'ignoring a confirmation that is not {"confirmed": [event ids]}: %r', payload[:200]
                )
                return
            if self._outbox is not None:
                self._outbox.forget(confirmation.confirmed)
            return
        try:
            reply = _reply_decoder.decode(payload)
        except msgspec.DecodeError:
            log.warning("ignoring an authorization reply that does not decode: %r", payload[:200])
            return
        future = self._pending.get(reply.request_id or "")
        if future is not None and not future.done():
            future.set_result(reply)

    def _on_connected(self, connection: int) -> None:
        self._wake.set()  # the sender sweeps the outbox for this connection

    # -- sending the outbox -----------------------------------------------------------------------

    async def _send_reports(self) -> None:
        """Publish new reports as they come; on each new connection, and every so often, every report that
        is due (see Outbox.due). At most SEND_WINDOW await the broker's acknowledgement at once."""
        link, outbox = self._started()
        loop = asyncio.get_running_loop()
        window = asyncio.Semaphore(SEND_WINDOW)
        sweep_every = max(0.5, self.resend_after_s / 3)
        next_sweep, swept_on = loop.time(), 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_sweep):
                    await self._wake.wait()
            self._wake.clear()
            connection = link.connection
            if not connection:
                next_sweep = loop.time() + sweep_every
                continue  # the next connection wakes us
            now = loop.time()
            if connection != swept_on or now >= next_sweep:
                reports = outbox.due(connection, now, self.resend_after_s, MAX_RESEND_AFTER_S)
                next_sweep, swept_on = now + sweep_every, connection
            else:
                reports = outbox.take_fresh()
            for report in reports:
                await window.acquire()
                if report.event_id not in outbox:  # confirmed while we waited for the window
                    window.release()
                    continue
                report.in_flight = True
                task = asyncio.create_task(self._send(link, report, window), name="margins-client-report")
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send(self, link: ReconnectingClient, report: PendingReport, window: asyncio.Semaphore) -> None:
        try:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = self.confirm_topic  # where the enforcer confirms it, after its commit
            connection = await link.publish(
                report.topic, report.payload, properties=props, timeout_s=REPORT_PUBLISH_TIMEOUT_S
            )
            report.sends += 1
            report.sent_on, report.sent_at = connection, asyncio.get_running_loop().time()
        except BrokerUnavailable:
            pass  # still due: the next connection or sweep sends it again
        finally:
            report.in_flight = False
            window.release()


@dataclass(slots=True)
class GuardedCall:
    """Inside `guard`: the model to call (`model`; the cheaper one on degrade) and where usage goes."""

    user_id: str
    grant: Grant
    feature: str
    usage: Any = None
    outcome: str = "ok"
    event_id: str | None = field(default=None)
    renewals: int = 0  # renewals of the reservation the broker acknowledged while the body ran

    @property
    def model(self) -> str:
        return self.grant.model

    @property
    def degraded(self) -> bool:
        return self.grant.decision == "degrade"

    def record(self, usage: Any, outcome: str = "ok") -> None:
        """The call's usage (OpenAI-style object or dict), reported when the guard exits."""
        usage_counts(usage)  # fail here, at the caller's line, not at exit
        _cache_write_count(usage)
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

    Raises BudgetDenied on deny and AuthorizationTimeout without an answer, before the body runs. Renews
    the reservation while the body runs. After the body, reporting never raises: the report waits in the
    client's outbox (a failure to write the outbox file is logged).
    """
    grant = await client.authorize(user_id, model, max_input_tokens, max_tokens)
    call = GuardedCall(user_id=user_id, grant=grant, feature=feature)
    renewing = asyncio.create_task(_keep_reserved(client, call, grant.renew_every_s()), name="margins-renew")
    try:
        yield call
    except BaseException:
        if call.usage is None:
            call.usage, call.outcome = {"prompt_tokens": 0, "completion_tokens": 0}, "error"
        raise
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
        if call.usage is None:  # the body never said what it spent: release the hold, spent nothing known
            call.usage, call.outcome = {"prompt_tokens": 0, "completion_tokens": 0}, "aborted"
        try:
            call.event_id = await client.report(
                user_id,
                grant.model,
                call.usage,
                reservation_id=grant.reservation_id,
                feature=feature,
                outcome=call.outcome,
            )
        except BudgetError as error:
            log.error(
                "usage of a call of %s under %s not kept durably: %s", user_id, grant.reservation_id, error
            )


async def _keep_reserved(client: BudgetClient, call: GuardedCall, every_s: float) -> None:
    """Renew the call's reservation every `every_s` until cancelled; a renewal that cannot reach the broker
    is tried again as soon as a connection is back (within the interval), never raised into the body."""
    while True:
        await asyncio.sleep(every_s)
        while True:
            try:
                await client.renew(call.user_id, call.grant.reservation_id, timeout_s=every_s)
                call.renewals += 1
                break
            except BudgetError as error:
                log.warning("cannot renew reservation %s: %s; retrying", call.grant.reservation_id, error)
                await asyncio.sleep(MIN_RENEW_EVERY_S)
