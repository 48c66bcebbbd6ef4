"""The broker options every command that talks to the broker takes: --broker, --username,
--password-file and --tls-ca, and the settings they make."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
    from budget.mqtt.broker import BrokerSettings

F = TypeVar("F", bound=Callable[..., object])


def broker_options(command: F) -> F:
    """Add --broker (required), --username, --password-file and --tls-ca to a click command."""
    return _with_broker_options(command, required=True, broker_help=_BROKER_HELP)


def optional_broker_options(command: F) -> F:
    """As broker_options, with --broker optional: `margins enforce` takes --nats instead on a cluster."""
    return _with_broker_options(command, required=False, broker_help=f"{_BROKER_HELP}; or --nats")


_BROKER_HELP = "mqtt://HOST:PORT (or mqtts:// for TLS)"


def _with_broker_options(command: F, required: bool, broker_help: str) -> F:
    for option in reversed(
        (
            click.option("--broker", "broker_url", required=required, default=None, help=broker_help),
            click.option("--username", default=None, help="MQTT user"),
            click.option("--password-file", default=None, help="file holding the MQTT password (first line)"),
            click.option(
                "--tls-ca", default=None, help="CA certificate file to verify the broker (implies TLS)"
            ),
        )
    ):
        command = option(command)
    return command


def broker_settings(
    broker_url: str, username: str | None, password_file: str | None, tls_ca: str | None, client_id: str
) -> BrokerSettings:
    """The settings the broker options give; raises BrokerError naming the option that is wrong."""
    from budget.mqtt.broker import BrokerSettings

    return BrokerSettings.from_url(
        broker_url, username=username, password_file=password_file, tls_ca=tls_ca, client_id=client_id
    )
