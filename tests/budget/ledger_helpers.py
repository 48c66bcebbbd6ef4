"""Factories shared by the ledger's tests: a config, usage reports and authorization requests."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from budget.domain.catalog import default_catalog
from budget.domain.config import EnforcerConfig, Plan
from budget.domain.ledger import Authorize, Ledger, RecordUsage

NOW = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
CATALOG = default_catalog()
MINI_COST = 1000 * 150 + 100 * 600  # gpt-4o-mini, 1000 input and 100 output tokens


def make_config(
    cap_usd: str = "1",
    at_cap: str = "block",
    degrade_model: str | None = None,
    soft_threshold_pct: int = 80,
    month_grace_s: int = 900,
) -> EnforcerConfig:
    """A config with one default plan and a "pro" plan."""
    plan = Plan(
        name="default",
        cap_nanos=int(Decimal(cap_usd) * 1_000_000_000),
        at_cap=at_cap,  # type: ignore[arg-type]
        degrade_model=degrade_model,
        soft_threshold_pct=soft_threshold_pct,
    )
    pro = Plan(
        name="pro", cap_nanos=50_000_000_000, at_cap="block", degrade_model=None, soft_threshold_pct=90
    )
    return EnforcerConfig(
        default_plan=plan, plans={"pro": pro}, reservation_ttl_s=600, month_grace_s=month_grace_s
    )


def make_ledger(**config: object) -> Ledger:
    return Ledger(make_config(**config), CATALOG)  # type: ignore[arg-type]


def usage(
    event_id: str, user: str = "u", ts: datetime = NOW, model: str = "gpt-4o-mini", **kw: object
) -> RecordUsage:
    fields: dict[str, object] = {"input_tokens": 1000, "output_tokens": 100, **kw}
    return RecordUsage(event_id=event_id, user_id=user, ts=ts, model=model, **fields)  # type: ignore[arg-type]


def authorize(
    request_id: str, user: str = "u", model: str = "gpt-4o", tokens: tuple[int, int] = (1000, 500)
) -> Authorize:
    return Authorize(
        request_id=request_id,
        user_id=user,
        model=model,
        max_input_tokens=tokens[0],
        max_output_tokens=tokens[1],
    )
