"""Where margins's MQTT broker is and who we are to it: settings parsed from `mqtt://HOST:PORT`."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from budget.errors import BrokerError

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where the broker is and who we are to it."""

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    client_id: str = "margins-enforcer"
    keepalive_s: int = 30
    # The broker keeps the enforcer's session (subscriptions + queued messages) this long while it is
    # down: a restart or a deploy must not lose the usage published meanwhile.
    session_expiry_s: int = 7 * 24 * 3600
    # QoS 1 messages the broker may have in flight to us before it waits for acknowledgements; we ack a
    # whole commit at once, so this bounds the batch size too.
    receive_maximum: int = 10_000

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password_file: str | None = None,
        tls_ca: str | None = None,
        client_id: str = "margins-enforcer",
    ) -> BrokerSettings:
        """Parse `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`; read the password from its file."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise BrokerError("--broker", f"expected mqtt://HOST:PORT or mqtts://HOST:PORT, got {url!r}")
        try:
            port = parts.port or (DEFAULT_TLS_PORT if parts.scheme == "mqtts" else DEFAULT_PORT)
        except ValueError as error:
            raise BrokerError("--broker", f"bad port in {url!r}: {error}") from error
        password = None
        if password_file is not None:
            try:
                password = Path(password_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as error:
                raise BrokerError("--password-file", f"cannot read {password_file}: {error}") from error
            if username is None:
                raise BrokerError("--password-file", "needs --username")
        if tls_ca is not None and not Path(tls_ca).is_file():
            raise BrokerError("--tls-ca", f"no such file: {tls_ca}")
        if parts.scheme == "mqtts" and tls_ca is None:
            tls_ca = ""  # TLS with the system's trust store
        return cls(
            host=parts.hostname,
            port=port,
            username=username,
            password=password,
            tls_ca=tls_ca,
            client_id=client_id,
        )

    def tls_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context, or None for plain TCP."""
        if self.tls_ca is None:
            return None
        return ssl.create_default_context(cafile=self.tls_ca or None)
