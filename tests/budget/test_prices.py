"""The price catalog: genai-prices' data to the nano-dollar, overrides, refused prices, tiers, history."""

from __future__ import annotations

import pickle
import tomllib
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest
from genai_prices import types

from budget.domain import genai_catalog
from budget.domain.catalog import default_catalog
from budget.domain.commands import worst_case_nanos
from budget.domain.config import EnforcerConfig, Plan
from budget.domain.events import ReservationGranted, UsageRecorded
from budget.domain.ledger import Authorize, Ledger, RecordUsage
from budget.domain.price_overrides import with_overrides
from budget.domain.prices import (
    ALWAYS,
    CatalogSource,
    ModelPrice,
    PriceCatalog,
    PriceChange,
    Rates,
    Tier,
)
from budget.errors import PriceError, PriceRefused, UnknownModelError

ROOT = Path(__file__).resolve().parents[2]
TODAY = date(2026, 12, 2)
CATALOG = default_catalog(TODAY)
# The models the scenarios, notebooks and README use, under the names they use.
USED = ("gpt-4o", "gpt-4o-mini", "gpt-5-nano", "gpt-5-mini", "gpt-4.1-nano", "claude-haiku-4.5")
# (model, input, cached input, cache write, output) tokens: flat prices, cache reads and writes, a tiered
# model below and above its 200k tier, and a dated snapshot id.
CALLS = [
    ("gpt-4o", 1000, 0, 0, 100),
    ("gpt-4o-mini", 12_345, 4_096, 0, 777),
    ("gpt-5-nano", 3_000, 2_048, 0, 1_500),
    ("claude-haiku-4.5", 9_000, 2_000, 3_000, 800),
    ("claude-sonnet-4.5", 150_000, 20_000, 10_000, 4_000),
    ("claude-sonnet-4.5", 250_000, 20_000, 10_000, 4_000),
    ("gemini-2.5-pro", 200_001, 0, 0, 1_000),
    ("gemini-2.5-flash-lite", 5_000, 1_000, 0, 300),
    ("gpt-4o-2024-08-06", 2_000, 0, 0, 400),
]


@pytest.mark.parametrize(("model", "tokens_in", "cached", "written", "tokens_out"), CALLS)
def test_a_call_costs_what_genai_prices_itself_computes_to_the_nano_dollar(
    model: str, tokens_in: int, cached: int, written: int, tokens_out: int
) -> None:
    usage = genai_prices.Usage(
        input_tokens=tokens_in, cache_read_tokens=cached, cache_write_tokens=written, output_tokens=tokens_out
    )
    provider = (
        "anthropic" if model.startswith("claude") else "google" if model.startswith("gemini") else "openai"
    )
    expected = genai_prices.calc_price(
        usage, model, provider_id=provider, genai_request_timestamp=datetime(2026, 12, 2, tzinfo=UTC)
    )
    ours = CATALOG.cost_nanos(model, tokens_in, tokens_out, cached, written)
    assert Decimal(ours) == expected.total_price * 1_000_000_000


def test_the_prices_margins_used_to_type_by_hand_are_the_catalogs() -> None:
    """prices.toml of 2026-11-26 (USD per 1M tokens: input, cached input, cache write, output)."""
    by_hand = {
        "gpt-4o": (2500, 1250, 2500, 10_000),
        "gpt-4o-mini": (150, 75, 150, 600),
        "gpt-5-nano": (50, 5, 50, 400),
        "gpt-5-mini": (250, 25, 250, 2000),
        "gpt-4.1-nano": (100, 25, 100, 400),
        "claude-haiku-4.5": (1000, 100, 1250, 5000),
        "claude-sonnet-4.5": (3000, 300, 3750, 15_000),
        "gemini-2.5-pro": (1250, 125, 1250, 10_000),
    }
    for model, rates in by_hand.items():
        assert CATALOG[model].base == Rates(*rates), model
    assert all(not CATALOG[model].tiers for model in USED)


def test_the_catalog_says_which_data_it_is() -> None:
    assert CATALOG.source == CatalogSource(f"genai-prices {genai_prices.__version__}", "2026-11-10")
    assert CATALOG.provenance() == {
        "catalog": f"genai-prices {genai_prices.__version__}",
        "as_of": "2026-11-10",
        "priced_on": "2026-12-02",
        "overridden": [],
    }


def test_the_locked_genai_prices_release_has_its_publication_day() -> None:
    """RELEASED must know the version uv.lock pins, with the day its wheel was uploaded."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (package,) = [p for p in lock["package"] if p["name"] == "genai-prices"]
    uploaded = package["wheels"][0]["upload-time"][:10]
    assert genai_catalog.RELEASED[package["version"]] == uploaded


def test_other_names_of_a_model_resolve_to_it() -> None:
    assert CATALOG.resolve("claude-haiku-4.5") == "claude-haiku-4-5"
    assert CATALOG.resolve("claude-haiku-4-5-20251001") == "claude-haiku-4-5"
    assert CATALOG.resolve("gpt-4o-2024-08-06") == "gpt-4o"
    assert CATALOG["gpt-4o-2024-05-13"].input == 5000  # an older snapshot keeps its own (dearer) price
    assert "gpt-9-ultra" not in CATALOG


def test_an_unknown_model_names_the_closest_ones() -> None:
    with pytest.raises(UnknownModelError) as raised:
        CATALOG["gpt-4x"]
    assert "gpt-4o" in raised.value.closest
    assert str(raised.value).startswith("unknown model 'gpt-4x'; closest in the price catalog: ")


def test_a_price_that_is_not_whole_nano_dollars_is_refused_with_its_reason() -> None:
    # gemini-1.5-flash's cache reads cost $0.01875 per 1M tokens: 18.75 nano-dollars a token.
    assert "gemini-1.5-flash" not in CATALOG
    with pytest.raises(UnknownModelError) as raised:
        CATALOG["gemini-1.5-flash"]
    assert str(raised.value) == (
        "model 'gemini-1.5-flash' cannot be priced: the catalog's cached input price, $0.01875 per 1M "
        "tokens, is not a whole number of nano-dollars per token and margins never rounds a price: give it "
        "in [prices.gemini-1.5-flash]"
    )
    # The same rule on a price made up here, so it holds whatever the data: a tier's price counts too.
    tiered = types.TieredPrices(base=Decimal("1"), tiers=[types.Tier(start=128_000, price=Decimal("0.0375"))])
    with pytest.raises(PriceRefused, match=r"input price for prompts above 128,000 tokens, \$0.0375"):
        genai_catalog.convert("made-up", types.ModelPrice(input_mtok=tiered, output_mtok=Decimal("2")))


def test_a_model_without_per_token_text_prices_is_refused() -> None:
    assert "tts-1" in CATALOG.refused
    assert (
        CATALOG.refusal("tts-1")
        == "the catalog lists no per-token price for its input and output text tokens"
    )


def test_the_catalogs_prices_are_measured_whole_except_the_refused() -> None:
    """Every price margins charges is a whole number of nano-dollars; the refused are listed with why."""
    not_whole = {model for model, why in CATALOG.refused.items() if "whole number" in why}
    # Measured on genai-prices 0.2.3: Gemini 1.5's prices above and below its 128k tier, nothing else.
    assert not_whole == {"gemini-1.5-flash", "gemini-flash-1.5", "gemini-flash-1.5-8b", "gemini-pro-1.5"}
    assert len(CATALOG.prices) > 150


# -- tiers by prompt size ---------------------------------------------------------------------------


def tiered_catalog() -> PriceCatalog:
    """A model dearer on every token above 200,000 prompt tokens, defined here (not from the data)."""
    base = PriceCatalog({}, CatalogSource("test"))
    return with_overrides(
        base,
        {
            "long": {
                "input": "3.00",
                "cached_input": "0.30",
                "cache_write": "3.75",
                "output": "15.00",
                "tiers": [
                    {
                        "above": 200_000,
                        "input": "6.00",
                        "cached_input": "0.60",
                        "cache_write": "7.50",
                        "output": "22.50",
                    }
                ],
            },
            "flat": {"input": "1.00", "output": "2.00"},
        },
        "prices",
    )


def test_a_call_pays_the_tier_of_its_prompt_size_on_every_token() -> None:
    long = tiered_catalog()["long"]
    assert long.cost_nanos(200_000, 1_000) == 200_000 * 3_000 + 1_000 * 15_000
    assert long.cost_nanos(200_001, 1_000) == 200_001 * 6_000 + 1_000 * 22_500
    # Cached tokens count toward the prompt's size: 150k uncached + 60k cached is a 210k prompt.
    assert long.cost_nanos(210_000, 0, cached_input_tokens=60_000) == 150_000 * 6_000 + 60_000 * 600


def test_the_worst_case_reserves_the_dearest_tier_the_largest_prompt_can_reach() -> None:
    long = tiered_catalog()["long"]
    # Up to 200k prompt tokens the top tier cannot be reached: the dearest input is a cache write.
    assert worst_case_nanos(long, 200_000, 1_000) == 200_000 * 3_750 + 1_000 * 15_000
    assert worst_case_nanos(long, 300_000, 1_000) == 300_000 * 7_500 + 1_000 * 22_500


def test_the_ledger_reserves_and_charges_by_tier() -> None:
    plan = Plan(name="default", cap_nanos=10**12, at_cap="block", degrade_model=None, soft_threshold_pct=80)
    ledger = Ledger(EnforcerConfig(default_plan=plan), tiered_catalog())
    now = datetime(2026, 12, 2, tzinfo=UTC)
    ask = Authorize(
        request_id="r1", user_id="u1", model="long", max_input_tokens=250_000, max_output_tokens=10
    )
    [granted] = ledger.execute(ask, now)
    assert isinstance(granted, ReservationGranted)
    assert granted.amount_nanos == 250_000 * 7_500 + 10 * 22_500
    use = RecordUsage(
        event_id="e1", user_id="u1", ts=now, model="long", input_tokens=250_000, output_tokens=10
    )
    [usage] = ledger.execute(use, now)
    assert isinstance(usage, UsageRecorded)
    assert usage.cost_nanos == 250_000 * 6_000 + 10 * 22_500


def test_the_catalogs_tiers_are_its_own() -> None:
    sonnet = CATALOG["claude-sonnet-4.5"]
    assert sonnet.tiers == (Tier(200_000, Rates(6000, 600, 7500, 22_500)),)


# -- overrides --------------------------------------------------------------------------------------


def test_a_partial_override_keeps_the_catalogs_other_fields_and_tiers() -> None:
    catalog = with_overrides(
        CATALOG, {"gpt-4o": {"input": "2.00"}, "claude-sonnet-4.5": {"output": "14.00"}}, "prices"
    )
    assert catalog["gpt-4o"].base == Rates(2000, 1250, 2500, 10_000)
    assert catalog["claude-sonnet-4.5"].base == Rates(3000, 300, 3750, 14_000)
    assert catalog["claude-sonnet-4.5"].tiers == CATALOG["claude-sonnet-4.5"].tiers
    assert catalog.overridden == frozenset({"gpt-4o", "claude-sonnet-4-5"})
    assert CATALOG["gpt-4o"].input == 2500  # the catalog itself is unchanged


def test_an_override_prices_every_name_of_the_model() -> None:
    catalog = with_overrides(CATALOG, {"claude-haiku-4.5": {"output": "4.00"}}, "prices")
    assert catalog["claude-haiku-4-5-20251001"].output == 4000
    assert catalog["claude-haiku-4.5"].output == 4000


def test_a_new_model_a_deployment_name_and_a_flat_override_of_a_tiered_model() -> None:
    catalog = with_overrides(
        CATALOG,
        {
            "my-finetune": {"input": "0.30", "output": "1.20"},
            "support-bot": {"like": "claude-sonnet-4.5"},
            "gemini-2.5-pro": {"tiers": []},
            "gemini-1.5-flash": {"input": "0.075", "cached_input": "0.019", "output": "0.30"},
        },
        "prices",
    )
    assert catalog["my-finetune"].base == Rates(300, 300, 300, 1200)
    assert catalog["support-bot"].tiers == CATALOG["claude-sonnet-4.5"].tiers
    assert catalog["support-bot"].base == CATALOG["claude-sonnet-4.5"].base
    assert catalog["gemini-2.5-pro"].tiers == ()
    assert catalog["gemini-1.5-flash"].cached_input == 19  # a refused model, priced by the override


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"m": {"input": "0.0375", "output": "1"}}, "prices.m: input: at most 3 decimals"),
        ({"m": {"input": "1"}}, "prices.m: output: missing; a price needs input and output"),
        ({"m": {"like": "gpt-4x", "output": "1"}}, "prices.m: like: expected a model of the price catalog"),
        ({"m": {"input": "1", "output": "1", "tiers": [{"input": "2", "output": "2"}]}}, "tiers[0].above"),
        ({"m": {"input": "1", "output": "1", "colour": 1}}, "prices.m: colour: unknown field"),
    ],
)
def test_a_bad_override_names_the_field(table: dict[str, object], message: str) -> None:
    with pytest.raises(PriceError, match=message.replace("[", r"\[").replace("]", r"\]")):
        with_overrides(CATALOG, table, "prices")


# -- history ----------------------------------------------------------------------------------------


def test_an_event_is_priced_at_the_price_in_force_at_its_timestamp() -> None:
    # o3's list price fell from $10 / $40 to $2 / $8 per 1M tokens on 2025-06-10.
    before, after = datetime(2025, 6, 9, 23, 59, tzinfo=UTC), datetime(2025, 6, 10, tzinfo=UTC)
    assert CATALOG.cost_nanos("o3", 1000, 100, at=before) == 1000 * 10_000 + 100 * 40_000
    assert CATALOG.cost_nanos("o3", 1000, 100, at=after) == 1000 * 2_000 + 100 * 8_000
    assert CATALOG["o3"].input == 2_000  # today's price
    assert default_catalog(date(2025, 6, 1))["o3"].input == 10_000  # the catalog as of a day


def test_history_is_the_catalogs_own_order_of_changes() -> None:
    old = ModelPrice("m", 10, 10, 10, 10)
    new = ModelPrice("m", 5, 5, 5, 5)
    catalog = PriceCatalog(
        {"m": new},
        CatalogSource("test"),
        date(2026, 1, 1),
        {"m": (PriceChange(ALWAYS, old), PriceChange(date(2025, 1, 1), new))},
    )
    assert catalog.price_at("m", datetime(2024, 12, 31, 23, 0, tzinfo=UTC)) == old
    assert catalog.price_at("m", datetime(2025, 1, 1, 0, 30, tzinfo=UTC)) == new
    assert catalog.pinned().price_at("m", datetime(2024, 12, 31, tzinfo=UTC)) == new  # a forecast's prices
    overridden = with_overrides(catalog, {"m": {"input": "0.001"}}, "prices")
    assert overridden.price_at("m", datetime(2024, 1, 1, tzinfo=UTC)).input == 1  # an override: always


def test_a_catalog_travels_to_worker_processes() -> None:
    copy = pickle.loads(pickle.dumps(CATALOG))
    assert copy.resolve("gpt-4o-2024-08-06") == "gpt-4o"
    assert copy["claude-sonnet-4.5"] == CATALOG["claude-sonnet-4.5"]


def test_the_ledger_charges_a_late_event_at_the_price_in_force_at_its_timestamp() -> None:
    plan = Plan(name="default", cap_nanos=10**12, at_cap="block", degrade_model=None, soft_threshold_pct=80)
    ledger = Ledger(EnforcerConfig(default_plan=plan), CATALOG)
    then = datetime(2025, 6, 8, 23, tzinfo=UTC)  # o3 cost $10 / $40 per 1M tokens until 2025-06-09
    use = RecordUsage(event_id="e1", user_id="u1", ts=then, model="o3", input_tokens=1000, output_tokens=100)
    [usage, *_] = ledger.execute(use, datetime(2025, 6, 10, tzinfo=UTC))  # reported two days late
    assert isinstance(usage, UsageRecorded)
    assert usage.cost_nanos == 1000 * 10_000 + 100 * 40_000
    assert CATALOG.price_at("o3", datetime(2025, 6, 10, tzinfo=UTC)).input < 10_000  # it fell since


def test_an_authorization_reserves_at_the_price_in_force_when_it_is_decided() -> None:
    plan = Plan(name="default", cap_nanos=10**12, at_cap="block", degrade_model=None, soft_threshold_pct=80)
    ledger = Ledger(EnforcerConfig(default_plan=plan), CATALOG)

    def ask(request_id: str) -> Authorize:
        return Authorize(
            request_id=request_id, user_id="u1", model="o3", max_input_tokens=1000, max_output_tokens=100
        )

    [before] = ledger.execute(ask("r1"), datetime(2025, 6, 8, 12, tzinfo=UTC))  # o3: $10 / $40 until 06-09
    [after] = ledger.execute(ask("r2"), datetime(2025, 6, 20, 12, tzinfo=UTC))
    assert isinstance(before, ReservationGranted) and isinstance(after, ReservationGranted)
    assert before.amount_nanos == 1000 * 10_000 + 100 * 40_000
    assert after.amount_nanos < before.amount_nanos


def test_the_ledger_prices_a_usage_named_by_a_dated_snapshot_as_its_model() -> None:
    plan = Plan(name="default", cap_nanos=10**12, at_cap="block", degrade_model=None, soft_threshold_pct=80)
    ledger = Ledger(EnforcerConfig(default_plan=plan), CATALOG)
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)

    def use(event_id: str, model: str) -> RecordUsage:
        return RecordUsage(
            event_id=event_id, user_id="u1", ts=now, model=model, input_tokens=1000, output_tokens=100
        )

    [dated, *_] = ledger.execute(use("e1", "gpt-4o-2024-08-06"), now)
    [plain, *_] = ledger.execute(use("e2", "gpt-4o"), now)
    assert isinstance(dated, UsageRecorded) and isinstance(plain, UsageRecorded)
    assert dated.cost_nanos == plain.cost_nanos == 1000 * 2_500 + 100 * 10_000
