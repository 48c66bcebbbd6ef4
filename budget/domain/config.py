"""The enforcer's config file (TOML) validated into frozen objects; defaults live here and only here.

```toml
default_cap_usd = "5.00"        # a user's monthly cap unless a plan or an admin message says otherwise
soft_threshold_pct = 80         # alert (and state "soft") once settled spend reaches this share of the cap
at_cap = "degrade"              # "block" or "degrade"
degrade_model = "gpt-4o-mini"   # with at_cap = "degrade": the cheaper model offered when the asked one no
                                # longer fits
reservation_ttl_s = 600         # an unsettled reservation returns its amount after this long
default_timezone = "UTC"        # IANA name; a user's months are calendar months in their time zone
month_grace_s = 900             # a month still takes usage reported by its timestamp this long after it
                                # ends (0 to 86400); later, usage counts in the month it arrives in

[plans.pro]                     # named caps / actions an admin message can assign ("plan": "pro")
cap_usd = "50"
at_cap = "block"

[prices.my-finetune]            # optional price overrides or additions, USD per 1M tokens
input = "0.30"
output = "1.20"

[http.apps.checkout]            # an application allowed through `margins enforce --http`: the sha256 (hex)
token_sha256 = "9f86d0..."      # of its bearer token, so the file can be committed without the token
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from budget.domain.catalog import default_catalog
from budget.domain.price_overrides import with_overrides
from budget.domain.prices import NANOS_PER_USD, PriceCatalog
from budget.errors import ConfigError, PriceError

AtCap = Literal["block", "degrade"]
AT_CAP_ACTIONS: tuple[AtCap, ...] = ("block", "degrade")

DEFAULT_CAP_USD = Decimal("5")
DEFAULT_SOFT_THRESHOLD_PCT = 80
DEFAULT_AT_CAP: AtCap = "block"
DEFAULT_RESERVATION_TTL_S = 600
DEFAULT_TIMEZONE = "UTC"
DEFAULT_MONTH_GRACE_S = 900
# At most a day: the dedupe window (the current and the previous UTC month, and a day) must cover every
# month that still takes usage by its timestamp.
MAX_MONTH_GRACE_S = 86_400
MAX_CAP_USD = Decimal("1000000000")
_ONE_NANO_USD = Decimal(1).scaleb(-9)

_TOP_FIELDS = frozenset(
    {
        "default_cap_usd",
        "soft_threshold_pct",
        "at_cap",
        "degrade_model",
        "reservation_ttl_s",
        "default_timezone",
        "month_grace_s",
        "plans",
        "prices",
        "http",
    }
)
_PLAN_FIELDS = frozenset({"cap_usd", "at_cap", "degrade_model", "soft_threshold_pct"})
_SHA256_HEX = re.compile("[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Plan:
    """A named cap and what happens at it."""

    name: str
    cap_nanos: int
    at_cap: AtCap
    degrade_model: str | None
    soft_threshold_pct: int


@dataclass(frozen=True, slots=True)
class EnforcerConfig:
    """The validated config. `default_plan` applies to a user with no plan; `plans` are the named ones."""

    default_plan: Plan
    plans: Mapping[str, Plan] = field(default_factory=dict)
    reservation_ttl_s: int = DEFAULT_RESERVATION_TTL_S
    default_timezone: str = DEFAULT_TIMEZONE
    month_grace_s: int = DEFAULT_MONTH_GRACE_S
    price_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    http_apps: Mapping[str, str] = field(default_factory=dict)  # app name -> sha256 (hex) of its token
    source: str = "(defaults)"

    @classmethod
    def default(cls) -> EnforcerConfig:
        """The config used when no file is given."""
        return cls(
            default_plan=Plan(
                name="default",
                cap_nanos=usd_to_nanos(DEFAULT_CAP_USD, "(defaults)", "default_cap_usd"),
                at_cap=DEFAULT_AT_CAP,
                degrade_model=None,
                soft_threshold_pct=DEFAULT_SOFT_THRESHOLD_PCT,
            )
        )

    def plan(self, name: str | None) -> Plan:
        """The named plan, or the default plan for None; raises ConfigError for an unknown name."""
        if name is None:
            return self.default_plan
        try:
            return self.plans[name]
        except KeyError:
            known = ", ".join(sorted(self.plans)) or "none"
            raise ConfigError(self.source, "plan", f"unknown plan {name!r}; known plans: {known}") from None

    def catalog(self, base: PriceCatalog | None = None) -> PriceCatalog:
        """The price catalog with this config's overrides applied."""
        base = base if base is not None else default_catalog()
        if not self.price_overrides:
            return base
        try:
            return with_overrides(base, self.price_overrides, "prices")
        except PriceError as error:
            raise ConfigError(self.source, f"{error.where}.{error.field}", error.reason) from error


def usd_to_nanos(value: object, where: str, field_name: str, *, exact: bool = True) -> int:
    """A USD amount (string or number) -> integer nano-dollars; must be >= 0 and sane.

    `exact` (the default, for caps an admin or a config file sets): the amount must be a whole number of
    nano-dollars, so "1e-30" or "0.0000000005" is an error, never a silent $0 (or rounded) cap. Without it
    the amount is rounded down (a forecast's float cap)."""
    if isinstance(value, bool):
        raise ConfigError(where, field_name, f"expected an amount in USD, got {value!r}")
    try:
        usd = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(where, field_name, f"expected an amount in USD, got {value!r}") from None
    if not usd.is_finite() or usd < 0 or usd > MAX_CAP_USD:
        raise ConfigError(
            where, field_name, f"expected an amount between 0 and {MAX_CAP_USD} USD, got {value!r}"
        )
    whole = usd.quantize(_ONE_NANO_USD, rounding=ROUND_FLOOR)  # exact: at most 19 digits
    if exact and whole != usd:
        raise ConfigError(
            where,
            field_name,
            f"{value!r} is not a whole number of nano-dollars (USD with at most 9 decimals); a cap is "
            "never rounded",
        )
    return int(whole * NANOS_PER_USD)


def check_timezone(name: object, where: str, field_name: str) -> str:
    """An IANA time zone name that zoneinfo knows."""
    if not isinstance(name, str) or not name:
        raise ConfigError(where, field_name, f"expected an IANA time zone name, got {name!r}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(where, field_name, f"unknown IANA time zone {name!r}") from None
    return name


def _int_in(value: object, where: str, field_name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(where, field_name, f"expected a whole number from {low} to {high}, got {value!r}")
    return value


def _at_cap(value: object, where: str, field_name: str) -> AtCap:
    for action in AT_CAP_ACTIONS:
        if value == action:
            return action
    expected = " or ".join(f'"{action}"' for action in AT_CAP_ACTIONS)
    raise ConfigError(where, field_name, f"expected {expected}, got {value!r}")


def _plan(name: str, data: Mapping[str, Any], inherit: Plan | None, where: str, prefix: str) -> Plan:
    at_cap = _at_cap(
        data.get("at_cap", inherit.at_cap if inherit else DEFAULT_AT_CAP), where, f"{prefix}at_cap"
    )
    degrade_model = data.get("degrade_model", inherit.degrade_model if inherit else None)
    if degrade_model is not None and (not isinstance(degrade_model, str) or not degrade_model):
        raise ConfigError(where, f"{prefix}degrade_model", f"expected a model name, got {degrade_model!r}")
    if at_cap == "degrade" and degrade_model is None:
        raise ConfigError(where, f"{prefix}degrade_model", 'at_cap = "degrade" needs a degrade_model')
    cap_field = "default_cap_usd" if inherit is None else f"{prefix}cap_usd"
    cap_value = data.get("default_cap_usd" if inherit is None else "cap_usd")
    if cap_value is None and inherit is not None:
        raise ConfigError(where, cap_field, "missing; a plan needs cap_usd")
    cap_nanos = usd_to_nanos(DEFAULT_CAP_USD if cap_value is None else cap_value, where, cap_field)
    soft = _int_in(
        data.get("soft_threshold_pct", inherit.soft_threshold_pct if inherit else DEFAULT_SOFT_THRESHOLD_PCT),
        where,
        f"{prefix}soft_threshold_pct",
        1,
        100,
    )
    return Plan(
        name=name, cap_nanos=cap_nanos, at_cap=at_cap, degrade_model=degrade_model, soft_threshold_pct=soft
    )


def parse_config(
    data: Mapping[str, Any], where: str, base_catalog: PriceCatalog | None = None
) -> EnforcerConfig:
    """Validate a parsed TOML table; every error names `where`, the field and what was expected."""
    unknown = sorted(set(data) - _TOP_FIELDS)
    if unknown:
        raise ConfigError(
            where, unknown[0], f"unknown field; expected one of {', '.join(sorted(_TOP_FIELDS))}"
        )
    default_plan = _plan("default", data, None, where, "")
    plans_data = data.get("plans", {})
    if not isinstance(plans_data, dict):
        raise ConfigError(where, "plans", "expected a table of plans ([plans.NAME])")
    plans: dict[str, Plan] = {}
    for name, plan_data in plans_data.items():
        prefix = f"plans.{name}."
        if not isinstance(plan_data, dict):
            raise ConfigError(where, f"plans.{name}", "expected a table with cap_usd and optionally at_cap")
        bad = sorted(set(plan_data) - _PLAN_FIELDS)
        if bad:
            raise ConfigError(
                where, prefix + bad[0], f"unknown field; expected one of {', '.join(sorted(_PLAN_FIELDS))}"
            )
        plans[name] = _plan(name, plan_data, default_plan, where, prefix)
    ttl = _int_in(
        data.get("reservation_ttl_s", DEFAULT_RESERVATION_TTL_S), where, "reservation_ttl_s", 1, 86_400
    )
    timezone = check_timezone(data.get("default_timezone", DEFAULT_TIMEZONE), where, "default_timezone")
    grace = _int_in(
        data.get("month_grace_s", DEFAULT_MONTH_GRACE_S), where, "month_grace_s", 0, MAX_MONTH_GRACE_S
    )
    overrides = data.get("prices", {})
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise ConfigError(where, "prices", "expected tables of prices ([prices.MODEL] with input, output)")
    config = EnforcerConfig(
        default_plan=default_plan,
        plans=plans,
        reservation_ttl_s=ttl,
        default_timezone=timezone,
        month_grace_s=grace,
        price_overrides=overrides,
        http_apps=_http_apps(data.get("http", {}), where),
        source=where,
    )
    catalog = config.catalog(base_catalog)
    for plan in (default_plan, *plans.values()):
        if plan.degrade_model is not None and plan.degrade_model not in catalog:
            field_name = "degrade_model" if plan is default_plan else f"plans.{plan.name}.degrade_model"
            raise ConfigError(where, field_name, f"model {plan.degrade_model!r} is not in the price catalog")
    return config


def _http_apps(data: object, where: str) -> dict[str, str]:
    """`[http.apps.NAME] token_sha256 = "<64 hex digits>"` -> {NAME: digest}; one token per application."""
    if not isinstance(data, dict):
        raise ConfigError(where, "http", "expected a table ([http.apps.NAME])")
    unknown = sorted(set(data) - {"apps"})
    if unknown:
        raise ConfigError(where, f"http.{unknown[0]}", "unknown field; expected apps")
    apps = data.get("apps", {})
    if not isinstance(apps, dict):
        raise ConfigError(where, "http.apps", "expected tables of applications ([http.apps.NAME])")
    digests: dict[str, str] = {}
    for name, app in apps.items():
        prefix = f"http.apps.{name}"
        if not isinstance(app, dict):
            raise ConfigError(where, prefix, "expected a table with token_sha256")
        bad = sorted(set(app) - {"token_sha256"})
        if bad:
            raise ConfigError(where, f"{prefix}.{bad[0]}", "unknown field; expected token_sha256")
        digest = app.get("token_sha256")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.lower()):
            raise ConfigError(
                where,
                f"{prefix}.token_sha256",
                "expected the sha256 of the token as 64 hex digits (printf %s TOKEN | sha256sum)",
            )
        other = next((n for n, d in digests.items() if d == digest.lower()), None)
        if other is not None:
            raise ConfigError(where, f"{prefix}.token_sha256", f"the same token as http.apps.{other}")
        digests[name] = digest.lower()
    return digests
