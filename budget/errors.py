"""Every error the budget package raises on purpose; each carries the fields that explain it.

    BudgetError               the root: catch it to report any of them
        UnknownModelError     model, closest, refused: a model the price catalog cannot price
        PriceError            where, field, reason: a price entry that is not an exact per-token price
        PriceRefused          model, reason: a catalog price margins cannot charge exactly per token
        ConfigError           where, field, reason: an enforcer config file or value
        StoreError            path, reason: the event store cannot be opened, read or written
            SnapshotDamaged   a ledger snapshot's files: a part missing or changed (an older one is used)
        SnapshotError         part, reason: a ledger snapshot whose parts cannot be restored
        QueryError            what, reason: a spend query that cannot be answered
        ListenError           address, reason: the enforcer's HTTP door cannot listen where it was told
        DoorClosed            reason: the enforcer takes no HTTP request now (replaying, stopping): a 503
        BrokerError           what, reason: a broker URL, credentials or TLS file that cannot be used
            ConnectionLost    reason: the broker connection closed or failed; the enforcer reconnects
            MalformedPacket   packet, reason: bytes that can never be a valid MQTT 5 packet
            BrokerRefused     code: the broker refused a BudgetClient (credentials, client id, ACL)
            BrokerUnavailable timeout_s: a BudgetClient had no broker connection in time; it keeps
                              reconnecting
        TopicError            topic, prefix: a message topic without one user level (also a ValueError)
        PayloadEncodingError  encoding, reason: a dead letter payload that does not decode (also a ValueError)
        UsageCountsError      usage: a usage object without integer token counts (also a ValueError)
        NotConnected          a BudgetClient used outside `async with BudgetClient.connect(...)`
        BudgetDenied          user_id, model, reason, remaining_usd: the enforcer answered deny
        AuthorizationTimeout  user_id, model, timeout_s: the enforcer did not answer in time
            AuthorizationExpired  the enforcer decided the request after its deadline: nothing is held
        OutboxError           path, reason: a BudgetClient's outbox file cannot be opened or written
        AlertStateError       path, reason: `margins alerts`' record of delivered alerts cannot be used
        WebhookError          url, reason: a webhook URL `margins alerts` cannot post to
        NotAnAlert            topic, reason: a message on margins/alerts/+ that is not an alert (also a
                              ValueError)
        UnguardedCall         call, reason: an SDK call a guard cannot bound (no output limit, say); also a
                              ValueError
            NotGuarded        call: an SDK method a guarded client does not guard (also an AttributeError)
        LeaseLost             key, owner, token, reason: a partition's lease is no longer this owner's
        JournalError          partition, reason: a partition's journal cannot be read as margins wrote it
        ClusterUnavailable    what, limit_s, reason: the NATS cluster did not answer a start-up call in time

A message names what was wrong and where, so a command line prints it as one line; code reads the fields.
"""

from __future__ import annotations


class BudgetError(Exception):
    """Root of the budget package's errors; subclasses carry the fields that explain them."""


class UnknownModelError(BudgetError):
    """A model the price catalog cannot price -- it does not list it, or lists it at a price margins cannot
    charge exactly (`refused`, the reason) -- so it is never charged $0. `closest`: listed names like it."""

    def __init__(self, model: str, closest: tuple[str, ...], refused: str | None = None) -> None:
        self.model = model
        self.closest = closest
        self.refused = refused
        if refused is not None:
            message = f"model {model!r} cannot be priced: {refused}"
        elif closest:
            message = f"unknown model {model!r}; closest in the price catalog: {', '.join(closest)}"
        else:
            message = f"unknown model {model!r}; the price catalog lists no similar name"
        super().__init__(message)


class PriceError(BudgetError):
    """A price entry that cannot be turned into an exact per-token price."""

    def __init__(self, where: str, field: str, reason: str) -> None:
        self.where = where
        self.field = field
        self.reason = reason
        super().__init__(f"{where}: {field}: {reason}")


class PriceRefused(BudgetError):
    """A price in the catalog's data that margins cannot charge exactly per text token; the model is listed
    as refused, with `reason`, and a [prices.MODEL] table can price it."""

    def __init__(self, model: str, reason: str) -> None:
        self.model = model
        self.reason = reason
        super().__init__(reason)


class ConfigError(BudgetError):
    """An enforcer config file (or value) that cannot be used: names the file, the field and what was
    expected."""

    def __init__(self, where: str, field: str, reason: str) -> None:
        self.where = where
        self.field = field
        self.reason = reason
        super().__init__(f"{where}: {field}: {reason}")


class StoreError(BudgetError):
    """The event store cannot be opened, read or written at `path`."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"event store {path}: {reason}")


class SnapshotDamaged(StoreError):
    """A snapshot that cannot be used: a part missing, changed, or a snapshot.json that cannot be read."""


class SnapshotError(BudgetError):
    """A ledger snapshot that cannot be restored: `part` names the part (or "meta") that is missing,
    damaged or inconsistent. A snapshot is never the truth: the caller falls back to an older one or to
    a full replay."""

    def __init__(self, part: str, reason: str) -> None:
        self.part = part
        self.reason = reason
        super().__init__(f"ledger snapshot: {part}: {reason}")


class QueryError(BudgetError):
    """A spend query that cannot be answered: a bad month, filter or SQL text."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")


class ListenError(BudgetError):
    """The enforcer's HTTP door cannot listen on `address` (HOST:PORT): a malformed address, or one that
    cannot be bound (in use, not this machine's, a privileged port)."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"--http {address}: {reason}")


class DoorClosed(BudgetError):
    """The enforcer cannot take an HTTP request now: `reason` says why (still replaying its store, or
    stopping). The door answers 503 with it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BrokerError(BudgetError):
    """The MQTT broker cannot be used as given: a bad broker URL, credentials file or TLS file."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")


class ConnectionLost(BrokerError):
    """The broker connection closed or failed; the enforcer reconnects."""

    def __init__(self, reason: str) -> None:
        super().__init__("broker connection", reason)


class MalformedPacket(BrokerError):
    """Bytes that can never be a valid MQTT 5 packet (or one the enforcer's client does not speak), or a
    packet field MQTT cannot carry; `packet` names the packet type."""

    def __init__(self, packet: str, reason: str) -> None:
        self.packet = packet
        super().__init__(f"MQTT {packet} packet", reason)


class TopicError(BudgetError, ValueError):
    """A message topic that is `prefix` but not followed by exactly one non-empty user level."""

    def __init__(self, topic: str, prefix: str) -> None:
        self.topic = topic
        self.prefix = prefix
        super().__init__(f"topic {topic!r} must be {prefix}<user_id> with one non-empty user level")


class PayloadEncodingError(BudgetError, ValueError):
    """A dead letter's kept payload that cannot be turned back into the bytes received, as its
    `payload_encoding` says it should."""

    def __init__(self, encoding: str, reason: str) -> None:
        self.encoding = encoding
        self.reason = reason
        super().__init__(f"dead letter payload is not valid {encoding}: {reason}")


class UsageCountsError(BudgetError, ValueError):
    """A usage object (an OpenAI-style usage, or a dict) without integer input and output token counts."""

    def __init__(self, usage: object) -> None:
        self.usage = usage
        expected = "usage needs integer prompt/input and completion/output token counts"
        super().__init__(f"{expected}, got {usage!r}")


class NotConnected(BudgetError):
    """A BudgetClient used outside `async with BudgetClient.connect(...)`."""

    def __init__(self) -> None:
        super().__init__("BudgetClient is not connected: use `async with BudgetClient.connect(...)`")


class BudgetDenied(BudgetError):
    """The enforcer answered deny: the call would not fit the user's cap (or could not be priced).

    `remaining_usd` is what the user had left this month when the request was decided.
    """

    def __init__(self, user_id: str, model: str, reason: str, remaining_usd: float | None) -> None:
        self.user_id = user_id
        self.model = model
        self.reason = reason
        self.remaining_usd = remaining_usd
        left = "" if remaining_usd is None else f" (${remaining_usd:.6f} left)"
        super().__init__(f"budget denied {model!r} for user {user_id!r}{left}: {reason}")


class AuthorizationTimeout(BudgetError):
    """No answer from the enforcer within the timeout: the call was neither allowed nor denied."""

    def __init__(self, user_id: str, model: str, timeout_s: float) -> None:
        self.user_id = user_id
        self.model = model
        self.timeout_s = timeout_s
        super().__init__(f"no authorization answer for user {user_id!r}, model {model!r} within {timeout_s}s")


class BrokerRefused(BrokerError):
    """The broker refused a BudgetClient's connection for a reason that retrying with the same settings
    cannot fix: bad credentials, a client id it does not accept, or no permission. `code` is the MQTT 5
    CONNACK reason code (0x84-0x8C)."""

    def __init__(self, broker: str, code: int, reason: str) -> None:
        self.code = code
        super().__init__(f"broker {broker}", f"refused the connection: {reason} (reason code 0x{code:02X})")


class BrokerUnavailable(BrokerError):
    """A BudgetClient had no broker connection within `timeout_s` (or lost it before the broker
    acknowledged); the client keeps reconnecting in the background."""

    def __init__(self, broker: str, timeout_s: float, reason: str, *, reconnecting: bool = True) -> None:
        self.timeout_s = timeout_s
        still = "; still reconnecting" if reconnecting else ""
        super().__init__(f"broker {broker}", f"{reason} (waited {timeout_s:g}s{still})")


class AuthorizationExpired(AuthorizationTimeout):
    """The enforcer answered "expired": the request reached it after its deadline (`expires_at`, the
    client's timeout), so it was not decided and holds nothing. Like a timeout, the call was neither allowed
    nor denied."""

    def __init__(self, user_id: str, model: str, timeout_s: float) -> None:
        self.user_id = user_id
        self.model = model
        self.timeout_s = timeout_s
        BudgetError.__init__(
            self,
            f"authorization for user {user_id!r}, model {model!r} reached the enforcer after its "
            f"{timeout_s}s deadline; nothing was reserved",
        )


class OutboxError(BudgetError):
    """A BudgetClient's outbox file (`outbox=PATH`) cannot be opened, read or written, or another process
    holds it. A report that could not be written is still kept in memory and sent, but does not survive a
    crash of this process."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"outbox {path}: {reason}")


class UnguardedCall(BudgetError, ValueError):
    """An SDK call that a guarded client (budget.integrations) cannot authorize as given, such as one
    without an output token limit, whose worst case has no bound: `call` names the SDK method. Raised
    before the model is called."""

    def __init__(self, call: str, reason: str) -> None:
        self.call = call
        self.reason = reason
        super().__init__(f"{call}: {reason}")


class NotGuarded(UnguardedCall, AttributeError):
    """An attribute of the SDK client that a guarded client does not guard, such as `embeddings` or
    `messages.batches`: `call` names it. A guarded client hands out no unguarded call path; the SDK client
    itself is its `.unguarded`. An AttributeError too, so `hasattr` and `getattr(..., default)` say it is
    not there."""

    def __init__(self, call: str) -> None:
        super().__init__(
            call,
            "not guarded by margins: a call through it would be neither authorized nor reported; "
            f"use .unguarded.{call} if you mean to call it unguarded",
        )


class AlertStateError(BudgetError):
    """The alert forwarder's record of delivered alerts (under --state) cannot be read or written."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"alert state {path}: {reason}")


class WebhookError(BudgetError):
    """A webhook URL the alert forwarder cannot post to (not http(s), no host, a bad port)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"--webhook {url!r}: {reason}")


class NotAnAlert(BudgetError, ValueError):
    """A message on the alerts topic that is not an alert (not a JSON object with an `alert` field)."""

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(f"{topic}: {reason}")


class LeaseLost(BudgetError):
    """A partition's lease that `owner` held with fencing token `token` is no longer theirs: another owner
    wrote it since. The holder must stop deciding for that partition."""

    def __init__(self, key: str, owner: str, token: int, reason: str) -> None:
        self.key = key
        self.owner = owner
        self.token = token
        self.reason = reason
        super().__init__(f"lease {key!r} held by {owner!r} at token {token} is lost: {reason}")


class JournalError(BudgetError):
    """A partition's journal holds what margins did not write there (a message without its headers, a
    gap), or disagrees with the partition's event store; the partition is not taken over."""

    def __init__(self, partition: int, reason: str) -> None:
        self.partition = partition
        self.reason = reason
        super().__init__(f"the journal of partition {partition}: {reason}")


class ClusterUnavailable(BudgetError):
    """The NATS cluster did not answer a call an enforcer needs to start (`what`) within `limit_s`."""

    def __init__(self, what: str, limit_s: float, reason: str) -> None:
        self.what = what
        self.limit_s = limit_s
        self.reason = reason
        super().__init__(f"the NATS cluster did not answer {what} within {limit_s:g} s ({reason})")
