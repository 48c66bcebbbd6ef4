"""The OpenAPI 3 schema of the HTTP door's /v1 routes, served at /openapi.json and kept as
deploy/openapi.json (a test checks they are equal; `python -m budget.service.http_schema` prints it)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

_ID = {"type": "string", "minLength": 1, "maxLength": 256}
_NAME = {"type": "string", "minLength": 1, "maxLength": 128}
_TOKENS = {"type": "integer", "minimum": 0, "maximum": 10_000_000}
_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339 with a zone"}
_USD = {"type": "number"}

USAGE_EVENT = {
    "type": "object",
    "required": ["event_id", "user_id", "ts", "model", "input_tokens", "output_tokens"],
    "properties": {
        "event_id": _ID,
        "user_id": _ID,
        "ts": _TIME,
        "model": _NAME,
        "input_tokens": _TOKENS,
        "output_tokens": _TOKENS,
        "cached_input_tokens": {**_TOKENS, "default": 0},
        "cache_write_tokens": {**_TOKENS, "default": 0},
        "feature": {**_NAME, "default": "default"},
        "reservation_id": {"type": ["string", "null"], "default": None},
        "outcome": {"type": "string", "default": "ok"},
    },
}

AUTHORIZE_REQUEST = {
    "type": "object",
    "required": ["request_id", "user_id", "model", "max_input_tokens", "max_output_tokens"],
    "properties": {
        "request_id": _ID,
        "user_id": _ID,
        "model": _NAME,
        "max_input_tokens": _TOKENS,
        "max_output_tokens": _TOKENS,
        "expires_at": {**_TIME, "description": "the caller's deadline; decided after it, nothing is held"},
    },
}

AUTHORIZE_REPLY = {
    "type": "object",
    "properties": {
        "request_id": {"type": ["string", "null"]},
        "decision": {"type": "string", "enum": ["allow", "degrade", "deny", "expired"]},
        "model": {"type": ["string", "null"], "description": "the model to call (degrade: the cheaper one)"},
        "reservation_id": {"type": ["string", "null"], "description": "report usage with it"},
        "remaining_usd": {"type": ["number", "null"]},
        "reason": {"type": "string"},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
    },
}

STATUS = {
    "type": "object",
    "properties": {
        "user_id": {"type": "string"},
        "month": {"type": "string", "examples": ["2026-11"]},
        "spent_usd": _USD,
        "reserved_usd": _USD,
        "cap_usd": _USD,
        "remaining_usd": _USD,
        "state": {"type": "string", "enum": ["ok", "soft", "capped"]},
        "plan": {"type": ["string", "null"]},
        "timezone": {"type": "string"},
    },
}

REJECTION = {
    "type": "object",
    "required": ["reason", "detail"],
    "properties": {
        "reason": {
            "type": "string",
            "description": "the dead letter's reason, as over MQTT: malformed_json, not_utf8, not_an_object, "
            "missing_field, wrong_type, out_of_range, user_mismatch, future_timestamp, too_large, "
            "unknown_model, conflicting_duplicate, too_old, empty, bad_topic, internal_error; "
            "unauthorized (401), not_ready (503)",
        },
        "detail": {"type": "string"},
        "count": {"type": "integer", "description": "usage: how many items were rejected"},
    },
}


def _json_body(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


_ERRORS = {
    "401": _json_body("#/components/schemas/Rejection", "no valid bearer token (counted: http_unauthorized)"),
    "503": _json_body("#/components/schemas/Rejection", "replaying the store, or stopping"),
}

SCHEMA: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "margins enforcer HTTP door",
        "version": "1",
        "description": "Per-user monthly spend caps, decided by `margins enforce --http HOST:PORT`. "
        "Every answer comes after the durable commit of what it decided; bodies are those of the MQTT "
        "wire format.",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/authorize": {
            "post": {
                "summary": "Reserve a call's worst case against the user's cap",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/AuthorizeRequest"}}
                    },
                },
                "responses": {
                    "200": _json_body(
                        "#/components/schemas/AuthorizeReply", "decided (allow, degrade, deny, expired)"
                    ),
                    "400": _json_body("#/components/schemas/Rejection", "a malformed body (dead-lettered)"),
                    **_ERRORS,
                },
            }
        },
        "/v1/usage": {
            "post": {
                "summary": "Report what calls spent: one event or an array (one user's, as on MQTT)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/UsageEvent"},
                                    {"type": "array", "items": {"$ref": "#/components/schemas/UsageEvent"}},
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "the event ids now settled (stored, duplicates or dead-lettered)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["confirmed"],
                                    "properties": {
                                        "confirmed": {"type": "array", "items": {"type": "string"}},
                                        "rejected": {"$ref": "#/components/schemas/Rejection"},
                                    },
                                }
                            }
                        },
                    },
                    "400": _json_body(
                        "#/components/schemas/Rejection", "every item rejected (dead-lettered)"
                    ),
                    **_ERRORS,
                },
            }
        },
        "/v1/users/{user_id}": {
            "get": {
                "summary": "A user's status this month, as durable",
                "parameters": [{"name": "user_id", "in": "path", "required": True, "schema": _ID}],
                "responses": {"200": _json_body("#/components/schemas/Status", "the status"), **_ERRORS},
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "UsageEvent": USAGE_EVENT,
            "AuthorizeRequest": AUTHORIZE_REQUEST,
            "AuthorizeReply": AUTHORIZE_REPLY,
            "Status": STATUS,
            "Rejection": REJECTION,
        },
    },
}


@cache
def openapi_json() -> bytes:
    """The schema as the file holds it: indented JSON with a final newline."""
    return (json.dumps(SCHEMA, indent=2) + "\n").encode()


if __name__ == "__main__":
    print(openapi_json().decode(), end="")
