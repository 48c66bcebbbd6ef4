"""What one alert becomes at the webhook: its key, a readable line, and the JSON body.

An alert is the JSON the enforcer publishes on margins/alerts/<user> (budget.service.messages). The body
posted keeps every field of it and adds `text`, one line for people (Slack shows `text`). The key says
which alert this is, whatever copy of it arrives: the alert's own `id` when it has one, else a digest of
its content (alerts from an enforcer older than the `id` field).

Pure: no IO, no clock.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from budget.errors import NotAnAlert

TOPIC_FILTER = "margins/alerts/+"
_ALERT_PREFIX = TOPIC_FILTER[:-1]


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as received: its key, its user (for ordering) and its fields."""

    key: str
    user_id: str
    fields: dict[str, Any]

    def body(self) -> bytes:
        """The JSON posted to the webhook: the alert's fields plus a Slack-compatible `text`."""
        return json.dumps({**self.fields, "text": alert_text(self.fields)}, separators=(",", ":")).encode()


def parse_alert(topic: str, payload: bytes) -> Alert:
    """The alert a message carries; raises NotAnAlert (budget.errors) saying what is wrong with it."""
    try:
        fields = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as error:
        raise NotAnAlert(topic, f"not JSON: {error}") from error
    if not isinstance(fields, dict) or not isinstance(fields.get("alert"), str):
        raise NotAnAlert(topic, "not a JSON object with an 'alert' field")
    user_id = fields.get("user_id")
    if not isinstance(user_id, str):
        user_id = topic.removeprefix(_ALERT_PREFIX)
    key = fields.get("id")
    if not isinstance(key, str) or not key:
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        key = f"{fields['alert']}:{user_id}:sha256={hashlib.sha256(canonical).hexdigest()[:32]}"
    return Alert(key, user_id, fields)


def alert_text(fields: dict[str, Any]) -> str:
    """One readable line: who, what happened, and spend against the cap in dollars where known."""
    user = fields.get("user_id", "?")
    month = fields.get("month")
    during = f" in {month}" if month else ""
    kind = fields.get("alert")
    if kind in ("soft", "cap"):
        what = "reached the soft limit" if kind == "soft" else "reached the cap"
        reserved = fields.get("reserved_usd")
        held = f" (+{_usd(reserved)} reserved)" if isinstance(reserved, int | float) and reserved else ""
        spend = f"{_usd(fields.get('spent_usd'))} spent{held} of a {_usd(fields.get('cap_usd'))} cap"
        return f"margins: user {user} {what}{during}: {spend}"
    if kind == "overshoot":
        return (
            f"margins: user {user} overshot{during}: usage {fields.get('event_id')} cost "
            f"{_usd(fields.get('cost_usd'))} after its reservation {fields.get('reservation_id')} expired"
        )
    if kind == "unknown_model":
        return f"margins: usage of user {user} was not counted: {fields.get('detail', 'unknown model')}"
    return f"margins: user {user}: {kind} alert{during}"


def _usd(value: object) -> str:
    """Dollars and cents from $1 up; below it, down to the micro-dollar (one call may cost $0.000285)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "$?"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    whole, _, fraction = f"{value:.6f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"
