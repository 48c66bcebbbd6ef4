"""Codes for what one attempt at a model call ended in, shared by the provider, streaming and retry."""

from __future__ import annotations

OK, ERROR, TIMEOUT, BAD, RATE_LIMITED, BAD_SERVED = 0, 1, 2, 3, 4, 5
# As UsageRecorded outcomes: a served second bad answer was billed and served like any other.
OUTCOME_NAMES = ("ok", "error", "timeout", "aborted", "rate_limited", "ok")
