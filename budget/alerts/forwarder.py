"""The alert forwarder as an `async with` component: alerts from the broker, posted to a webhook.

It holds a persistent MQTT 5 session (fixed client id, clean start off, a session expiry) subscribed to
margins/alerts/+ at QoS 1, so the broker keeps what is published while it is down. One worker posts the
alerts in the order they arrived (so in order per user) and acknowledges each only once the webhook
accepted it, or refused it for good: what was not forwarded is redelivered after a restart. Before that
acknowledgement the alert's key is written to the record of delivered alerts, and an alert whose key is
there is acknowledged without posting, so a redelivery after a crash between the two is not posted again.

Memory is bounded by the receive maximum this client announces: the broker sends no more unacknowledged
alerts than that, and keeps the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from datetime import UTC, datetime
from types import TracebackType

from budget.alerts.content import TOPIC_FILTER, parse_alert
from budget.alerts.delivered import DeliveredRecord
from budget.alerts.webhook import Backoff, Verdict, WebhookTarget, post, retry_after_s, verdict
from budget.errors import ConnectionLost, NotAnAlert
from budget.mqtt.broker import BrokerSettings
from budget.mqtt.connection import Mqtt5Connection, close_quietly
from budget.mqtt.packets import Publish

log = logging.getLogger("margins.alerts")

READY_LOG = "alerts ready"
DEFAULT_IN_FLIGHT = 64  # alerts the broker may have sent us unacknowledged: the memory bound


class AlertForwarder:
    """Forwards alerts from `broker` to `webhook`; `wait()` until `request_stop()`, then leave the block.

    Counters: `forwarded`, `already_delivered` (a redelivery skipped), `dropped` (refused for good),
    `retries`, `not_alerts`.
    """

    def __init__(
        self,
        broker: BrokerSettings,
        webhook: WebhookTarget,
        record: DeliveredRecord,
        *,
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        in_flight: int = DEFAULT_IN_FLIGHT,
    ) -> None:
        self.broker = broker
        self.webhook = webhook
        self.record = record
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff()
        self.in_flight = in_flight
        self.counters: Counter[str] = Counter()
        # (connection number, message); a message from an earlier connection is not acknowledged there,
        # the broker redelivers it on the new one.
        self._queue: asyncio.Queue[tuple[int, Publish]] = asyncio.Queue(maxsize=in_flight)
        self._client: Mqtt5Connection | None = None
        self._connection = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> AlertForwarder:
        self._tasks = [
            asyncio.create_task(self._connect_loop(), name="margins-alerts-broker"),
            asyncio.create_task(self._worker(), name="margins-alerts-worker"),
        ]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        for task in reversed(self._tasks):  # the worker first: nothing is acknowledged after this
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await close_quietly(self._client)
        log.info("alerts stopped: %s", ", ".join(f"{k}={v}" for k, v in sorted(self.counters.items())))

    def request_stop(self) -> None:
        """Ask `wait()` to return (safe to call from a signal handler on the loop)."""
        self._stop.set()

    async def wait(self) -> None:
        """Until a stop is requested; re-raises the error of a task that failed."""
        stop = asyncio.create_task(self._stop.wait(), name="margins-alerts-stop")
        done, _ = await asyncio.wait([stop, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        for task in done:
            if task is not stop and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    # -- broker -----------------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        backoff, failures = 0.1, 0
        b = self.broker
        while not self._stop.is_set():
            self._drain_queue()  # the old connection's messages come again on the new one
            self._connection += 1
            client = Mqtt5Connection(functools.partial(self._received, self._connection))
            self._client = client
            try:
                await client.start_session(b, receive_maximum=self.in_flight)
                await client.subscribe([TOPIC_FILTER])
                if failures:
                    log.info("reconnected to %s:%d after %d failed attempts", b.host, b.port, failures)
                backoff, failures = 0.1, 0
                log.info("%s: subscribed to %s on %s:%d", READY_LOG, TOPIC_FILTER, b.host, b.port)
                await client.wait_closed()
            except ConnectionLost as error:
                failures += 1
                level = logging.WARNING if failures == 1 else logging.INFO
                log.log(level, "broker %s:%d: %s; retrying in %.1f s", b.host, b.port, error.reason, backoff)
            finally:
                if not self._stop.is_set():
                    client.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _received(self, connection: int, message: Publish) -> None:
        try:
            self._queue.put_nowait((connection, message))
        except asyncio.QueueFull:
            # Only a broker that ignores our receive maximum, or QoS 0 publishes, get here: unacknowledged,
            # a QoS 1 message comes again on the next connection.
            log.warning(
                "alert queue full (%d): a message on %s waits for a reconnect", self.in_flight, message.topic
            )

    def _drain_queue(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    def _ack(self, connection: int, message: Publish) -> None:
        client = self._client
        if message.qos and connection == self._connection and client is not None and client.is_open:
            client.ack(message.packet_id)

    # -- forwarding -------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            connection, message = await self._queue.get()
            if connection != self._connection:
                continue  # redelivered on the current connection
            try:
                alert = parse_alert(message.topic, message.payload)
            except NotAnAlert as error:
                self.counters["not_alerts"] += 1
                log.warning("not forwarded, not an alert: %s", error)
                self._ack(connection, message)
                continue
            if alert.key in self.record:
                self.counters["already_delivered"] += 1
                log.info("already delivered, not posted again: %s", alert.key)
                self._ack(connection, message)
                continue
            if await self._post_until_done(alert.key, alert.body()):
                self.record.add(alert.key)  # before the acknowledgement, with no await between them
                self.counters["forwarded"] += 1
            self._ack(connection, message)

    async def _post_until_done(self, key: str, body: bytes) -> bool:
        """Post until the webhook accepts (True) or refuses for good (False); retries forever otherwise,
        since an alert not acknowledged stays with the broker anyway."""
        attempt = 0
        while True:
            try:
                answer = await post(self.webhook, body, key, self.timeout_s)
            except (OSError, TimeoutError, ValueError) as error:
                problem, asked = f"no answer ({error!r})", None
            else:
                match verdict(answer.status):
                    case Verdict.ACCEPTED:
                        if attempt:
                            log.info("webhook accepted %s after %d retries", key, attempt)
                        return True
                    case Verdict.DROP:
                        self.counters["dropped"] += 1
                        log.warning("webhook refused %s with HTTP %d: dropped", key, answer.status)
                        return False
                problem = f"HTTP {answer.status}"
                asked = retry_after_s(answer.retry_after, datetime.now(UTC))
            delay = self.backoff.delay(attempt, asked)
            level = logging.WARNING if attempt == 0 else logging.INFO
            log.log(level, "webhook %s: %s for %s; retry %d in %.1f s", self.webhook.shown, problem, key,
                    attempt + 1, delay)  # fmt: skip
            self.counters["retries"] += 1
            attempt += 1
            await asyncio.sleep(delay)


async def run_until_stopped(forwarder: AlertForwarder, signals: tuple[int, ...]) -> None:
    """Run `forwarder` until one of `signals` arrives."""
    loop = asyncio.get_running_loop()
    async with forwarder:
        for sig in signals:
            loop.add_signal_handler(sig, forwarder.request_stop)
        with contextlib.suppress(asyncio.CancelledError):
            await forwarder.wait()
