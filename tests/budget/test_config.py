"""The enforcer's config file: the example loads; every bad file names the file, the field and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from budget.domain.config import EnforcerConfig
from budget.errors import BudgetError, ConfigError
from budget.service.settings import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "caps.example.toml"


def test_the_shipped_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.default_plan.cap_nanos == 5_000_000_000
    assert config.default_plan.at_cap == "degrade" and config.default_plan.degrade_model == "gpt-4o-mini"
    assert config.plans["free"].cap_nanos == 500_000_000 and config.plans["free"].at_cap == "block"
    assert config.plans["pro"].soft_threshold_pct == 90
    assert config.reservation_ttl_s == 600 and config.month_grace_s == 900
    catalog = config.catalog()
    assert catalog["my-finetune"].input == 300 and catalog["my-finetune"].output == 1200
    assert "gpt-4o" in catalog


def test_defaults_live_in_one_place(tmp_path: Path) -> None:
    config = EnforcerConfig.default()
    assert config.default_plan.cap_nanos == 5_000_000_000
    assert config.default_plan.at_cap == "block"
    assert config.reservation_ttl_s == 600
    assert config.default_timezone == "UTC"
    assert config.month_grace_s == 900
    empty = load_config_text("", tmp_path)
    assert empty.default_plan == config.default_plan
    assert (empty.reservation_ttl_s, empty.default_timezone, empty.month_grace_s) == (
        config.reservation_ttl_s,
        config.default_timezone,
        config.month_grace_s,
    )
    assert load_config_text("month_grace_s = 0\n", tmp_path).month_grace_s == 0


def load_config_text(text: str, directory: Path) -> EnforcerConfig:
    path = directory / "caps.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("default_cap_usd = 5\ncolour = 1\n", "colour", "unknown field"),
        ('at_cap = "explode"\n', "at_cap", '"block" or "degrade"'),
        ('at_cap = "degrade"\n', "degrade_model", "needs a degrade_model"),
        ('at_cap = "degrade"\ndegrade_model = "gpt-99"\n', "degrade_model", "not in the price catalog"),
        ('default_cap_usd = "-3"\n', "default_cap_usd", "between 0"),
        ('default_cap_usd = "lots"\n', "default_cap_usd", "amount in USD"),
        ('default_cap_usd = "1e-30"\n', "default_cap_usd", "'1e-30' is not a whole number of nano-dollars"),
        ('[plans.pro]\ncap_usd = "0.0000000015"\n', "plans.pro.cap_usd", "whole number of nano-dollars"),
        ("month_grace_s = 86401\n", "month_grace_s", "from 0 to 86400"),
        ('month_grace_s = "15m"\n', "month_grace_s", "whole number"),
        ("soft_threshold_pct = 0\n", "soft_threshold_pct", "from 1 to 100"),
        ("reservation_ttl_s = true\n", "reservation_ttl_s", "whole number"),
        ('default_timezone = "Mars/Base"\n', "default_timezone", "unknown IANA time zone"),
        ('[plans.pro]\nat_cap = "block"\n', "plans.pro.cap_usd", "needs cap_usd"),
        ("[plans.pro]\ncap_usd = 5\nspeed = 1\n", "plans.pro.speed", "unknown field"),
        ("plans = 3\n", "plans", "table of plans"),
        ('[prices.m]\ninput = "0.1"\n', "prices.m.output", "missing"),
        ('[prices.gpt-4o]\noutput = "0.0001"\n', "prices.gpt-4o.output", "at most 3 decimals"),
        ("default_cap_usd = \n", "(file)", "not valid TOML"),
        ("http = 1\n", "http", "expected a table"),
        ("[http]\nport = 8080\n", "http.port", "unknown field"),
        ('[http.apps.shop]\ntoken = "abc"\n', "http.apps.shop.token", "unknown field"),
        ("[http.apps.shop]\n", "http.apps.shop.token_sha256", "64 hex digits"),
        ('[http.apps.shop]\ntoken_sha256 = "abc"\n', "http.apps.shop.token_sha256", "64 hex digits"),
        (
            f'[http.apps.a]\ntoken_sha256 = "{"ab" * 32}"\n[http.apps.b]\ntoken_sha256 = "{"AB" * 32}"\n',
            "http.apps.b.token_sha256",
            "the same token as http.apps.a",
        ),
    ],
)
def test_bad_files_name_the_file_and_the_field(text: str, field: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "caps.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    assert isinstance(error, BudgetError)
    assert error.where == str(path) and error.field == field
    assert expected in error.reason
    assert str(path) in str(error) and field in str(error)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_plans_inherit_the_top_level_action(tmp_path: Path) -> None:
    text = 'at_cap = "degrade"\ndegrade_model = "gpt-5-nano"\n[plans.team]\ncap_usd = "20"\n'
    config = load_config_text(text, tmp_path)
    assert config.plan("team").at_cap == "degrade" and config.plan("team").degrade_model == "gpt-5-nano"
    assert config.plan(None) is config.default_plan
    with pytest.raises(ConfigError, match="unknown plan"):
        config.plan("gold")


def test_http_apps_keep_the_digest_of_each_token(tmp_path: Path) -> None:
    digest = "0f" * 32
    config = load_config_text(f'[http.apps.checkout]\ntoken_sha256 = "{digest.upper()}"\n', tmp_path)
    assert config.http_apps == {"checkout": digest}
    assert load_config_text("", tmp_path).http_apps == {}
