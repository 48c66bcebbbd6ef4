"""A short-lived MQTT 5 connection for the admin commands: subscribe, maybe publish one message, and wait
for the first received message that answers the question; aiomqtt (paho) underneath, margins' errors on top.

Nothing aiomqtt or paho raises leaves this module: a broker that cannot be reached in time raises
BrokerUnavailable, one that refuses these credentials for good raises BrokerRefused.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import TypeVar

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from budget.errors import BrokerRefused, BrokerUnavailable
from budget.mqtt.broker import BrokerSettings
from budget.mqtt.reconnecting import PERMANENT_REFUSALS

T = TypeVar("T")
# Called with each received message's topic, payload and retain flag; the first result that is not None
# is the answer.
Answer = Callable[[str, bytes, bool], T | None]


def admin_client_id(username: str | None) -> str:
    """A client id of its own for each run, so two admin commands never disconnect each other."""
    return f"{username or 'margins-admin'}-{uuid.uuid4().hex[:8]}"


async def first_answer(
    settings: BrokerSettings,
    subscriptions: tuple[str, ...],
    answer: Answer[T],
    timeout_s: float,
    publish: tuple[str, bytes] | None = None,
) -> T | None:
    """Subscribe to `subscriptions`, then publish `publish` (topic, payload) at QoS 1 if given, and return
    the first `answer` of a received message that is not None; None if none came within `timeout_s`."""
    broker = f"{settings.host}:{settings.port}"
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password,
        identifier=settings.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=settings.tls_context(),
        timeout=timeout_s,
        clean_start=True,
    )
    try:
        async with asyncio.timeout(timeout_s):
            await client.__aenter__()
    except TimeoutError:
        raise BrokerUnavailable(broker, timeout_s, "no connection", reconnecting=False) from None
    except MqttConnectError as error:
        code = getattr(error.rc, "value", error.rc)
        if isinstance(code, int) and code in PERMANENT_REFUSALS:
            raise BrokerRefused(broker, code, PERMANENT_REFUSALS[code]) from None
        raise BrokerUnavailable(broker, timeout_s, str(error), reconnecting=False) from None
    except aiomqtt.MqttError as error:
        raise BrokerUnavailable(
            broker, timeout_s, str(error) or type(error).__name__, reconnecting=False
        ) from None
    try:
        async with asyncio.timeout(timeout_s):
            return await _listen(client, subscriptions, answer, publish)
    except TimeoutError:
        return None
    except aiomqtt.MqttError as error:
        raise BrokerUnavailable(
            broker, timeout_s, f"lost the connection: {error}", reconnecting=False
        ) from None
    finally:
        with contextlib.suppress(aiomqtt.MqttError):  # already gone: nothing is left to close
            await client.__aexit__(None, None, None)


async def _listen(
    client: aiomqtt.Client,
    subscriptions: tuple[str, ...],
    answer: Answer[T],
    publish: tuple[str, bytes] | None,
) -> T | None:
    for topic in subscriptions:
        await client.subscribe(topic, qos=1)
    if publish is not None:
        await client.publish(publish[0], publish[1], qos=1)
    async for message in client.messages:
        payload = message.payload
        body = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode()
        result = answer(str(message.topic), body, bool(message.retain))
        if result is not None:
            return result
    return None
