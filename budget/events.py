"""The event model both sides share: what costs money is a UsageRecorded event.

Events are frozen, carry a schema version (`v`) and have one JSON form. The simulator emits the same
UsageRecorded events as production; the enforcer folds them into ledgers; the store keeps them. Cost is
computed from the price catalog when the event is made and stored with it, so a later price change never
rewrites history.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

USAGE_SCHEMA_VERSION = 1

Outcome = Literal["ok", "error", "timeout", "aborted", "rate_limited", "cache_hit"]
CacheLayer = Literal["exact", "semantic", "fragment"]


class UsageRecorded(msgspec.Struct, frozen=True, kw_only=True, tag="usage_recorded"):
    """One billed (or cache-served) model call.

    `input_tokens` counts every prompt token; `cached_input_tokens` and `cache_write_tokens` say how many
    of them the provider's prompt cache served or stored. `cost_nanos` is exact, in 1e-9 USD.
    """

    event_id: str
    user_id: str
    ts: datetime
    model: str
    input_tokens: int
    output_tokens: int
    cost_nanos: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    feature: str = "default"
    outcome: Outcome = "ok"
    cache_layer: CacheLayer | None = None
    reservation_id: str | None = None
    v: int = USAGE_SCHEMA_VERSION


# The usage table: one row per UsageRecorded, identical for forecasts and live spend so one SQL query
# answers "what did we spend" and "what would we have spent". `source` says which: "live" for the
# enforcer, "sim:<scenario>" for a forecast; `run_id` tells forecast runs apart ("" when live).
USAGE_COLUMNS: dict[str, str] = {
    "event_id": "VARCHAR",
    "user_id": "VARCHAR",
    "ts": "TIMESTAMPTZ",
    "month": "VARCHAR",
    "model": "VARCHAR",
    "feature": "VARCHAR",
    "input_tokens": "BIGINT",
    "cached_input_tokens": "BIGINT",
    "cache_write_tokens": "BIGINT",
    "output_tokens": "BIGINT",
    "outcome": "VARCHAR",
    "cache_layer": "VARCHAR",
    "reservation_id": "VARCHAR",
    "cost_nanos": "BIGINT",
    "source": "VARCHAR",
    "run_id": "VARCHAR",
}

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageRecorded)


def encode_usage(event: UsageRecorded) -> bytes:
    """The JSON form of a UsageRecorded event."""
    return _encoder.encode(event)


def decode_usage(data: bytes | str) -> UsageRecorded:
    """Parse the JSON form; raises msgspec.ValidationError / DecodeError on bad input."""
    return _decoder.decode(data)
