"""Scenario files: every shipped one is valid; a bad one names the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.errors import ScenarioError
from sim.io.scenarios import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "scenarios").rglob("*.toml"))


def test_the_project_ships_the_seed_story_levers_and_launch_spike() -> None:
    names = {path.relative_to(ROOT / "scenarios").as_posix() for path in SHIPPED}
    assert {"seed-story/naive-mvp.toml", "seed-story/optimized.toml", "launch-spike.toml"} <= names
    assert len([n for n in names if n.startswith("levers/")]) == 6


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_scenario_is_valid(path: Path) -> None:
    scenario, catalog = load_scenario(path)
    assert scenario.name
    assert all(model in catalog for model in scenario.models)


def test_extends_merges_tables_key_by_key() -> None:
    scenario, _ = load_scenario(ROOT / "scenarios/levers/router.toml")
    assert scenario.router.enabled and scenario.router.cheap_model == "gpt-4o-mini"
    assert scenario.prompts.chains.share == 0.35  # from naive-mvp.toml
    assert scenario.retry.policy == "sdk-default"


BAD = [
    ("[cache.semantic]\nthresold = 0.9\n", "cache.semantic.thresold", "did you mean 'threshold'"),
    ("[router]\nmodel = 'gpt-9'\n", "router.model", "unknown model 'gpt-9'"),
    ("[cache.semantic]\nthreshold = 1.5\n", "cache.semantic.threshold", "<= 1.0"),
    ("[providers.gpt-4o]\nerror_rate = -0.1\n", "providers.gpt-4o.error_rate", ">= 0.0"),
    ("[providers.gpt-4o]\nrpm = -5\n", "providers.gpt-4o.rpm", ">= 1"),
    ("[[traffic.bursts]]\nstart_day = 1\nhours = 2\n", "traffic.bursts.0.factor", "missing"),
    ("[traffic]\nmau = 'many'\n", "traffic.mau", "expected `array`"),
    ("[prices.my-model]\ninput = 0.0001\noutput = 1\n", "prices.my-model.input", "at most 3 decimals"),
    ("[prompts]\nrepeat_share = 0.7\nparaphrase_share = 0.5\n", "prompts.paraphrase_share", "<= 1"),
    ("[traffic\n", "(file)", "not valid TOML"),
    ("extends = 'nowhere.toml'\n", "extends", "no such file"),
    ("extends = []\n", "extends", "or a list of them"),
    ("extends = ['nowhere.toml', 3]\n", "extends", "or a list of them"),
    ("[prompts.context]\nhistroy = true\n", "prompts.context.histroy", "did you mean 'history'"),
    ("[prompts.context]\nhistory = 'yes'\n", "prompts.context.history", "expected `bool`"),
    ("[prompts.context]\nsystem_tokens = -5\n", "prompts.context.system_tokens", ">= 0"),
    ("[prompts.context]\nmax_tokens = 0\n", "prompts.context.max_tokens", ">= 1"),
    ("[prompts.context]\nat_limit = 'drop'\n", "prompts.context.at_limit", "'drop'"),
    (
        "[prompts.context]\nsystem_tokens = 9000\nmax_tokens = 8000\n",
        "prompts.context.system_tokens",
        "fewer than prompts.context.max_tokens (8,000)",
    ),
    (
        "[prompts.context]\nhistory = true\nat_limit = 'summarize'\nmax_tokens = 900\nsummary_tokens = 900\n",
        "prompts.context.summary_tokens",
        "below prompts.context.max_tokens",
    ),
    (
        "[prompts]\nprefix_share = 0.5\n[prompts.context]\nhistory = true\n",
        "prompts.prefix_share",
        "expected 0 with [prompts.context]",
    ),
]


@pytest.mark.parametrize(("text", "field", "expected"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_file_names_file_field_and_expectation(
    tmp_path: Path, text: str, field: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert caught.value.path == str(path)
    assert caught.value.field == field
    assert expected in caught.value.reason


def test_an_extends_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("extends = 'b.toml'\n")
    (tmp_path / "b.toml").write_text("extends = 'a.toml'\n")
    with pytest.raises(ScenarioError, match="cycle"):
        load_scenario(tmp_path / "a.toml")


def test_extends_layers_a_list_of_files_in_order(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text("name = 'base'\n[cache.semantic]\nenabled = true\nthreshold = 0.8\n")
    (tmp_path / "profile.toml").write_text(
        "[cache.semantic]\nthreshold = 0.9\nprofile = [[0.9, 0.5, 0.01]]\n"
    )
    (tmp_path / "own.toml").write_text("name = 'own'\nextends = ['base.toml', 'profile.toml']\n")
    scenario, _ = load_scenario(tmp_path / "own.toml")
    semantic = scenario.cache.semantic
    assert (scenario.name, semantic.enabled, semantic.threshold) == ("own", True, 0.9)
    assert semantic.profile == [[0.9, 0.5, 0.01]]
    (tmp_path / "own.toml").write_text("extends = ['profile.toml', 'base.toml']\n")
    assert load_scenario(tmp_path / "own.toml")[0].cache.semantic.threshold == 0.8


def test_a_scenario_can_add_a_model_with_its_prices(tmp_path: Path) -> None:
    path = tmp_path / "own.toml"
    path.write_text("[router]\nmodel = 'my-model'\n[prices.my-model]\ninput = '0.20'\noutput = '0.80'\n")
    _, catalog = load_scenario(path)
    assert catalog["my-model"].input == 200 and catalog["my-model"].output == 800
