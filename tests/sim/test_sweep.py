"""Sweeps: grid variants validated like scenario files, reproducible tables, parallel runs, the figure."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from sim.cli import main
from sim.errors import ScenarioError
from sim.model.policies import router
from sim.workbench.sweep import run_sweep
from sim.workbench.sweep_render import sweep_table
from sim.workbench.variants import grid, parse_scalar, parse_vary
from tests.sim.scenarios import ALL_LEVERS, scenario_from

ROOT = Path(__file__).resolve().parents[2]
OPTIMIZED = str(ROOT / "scenarios/seed-story/optimized.toml")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = ["--mau", "200", "--days", "3", "--no-progress"]


def test_values_are_toml_scalars_and_bare_words_are_strings() -> None:
    assert parse_scalar("0.85") == 0.85
    assert parse_scalar("3") == 3
    assert parse_scalar("true") is True
    assert parse_scalar('"gpt-4o"') == "gpt-4o"
    assert parse_scalar("cost-aware") == "cost-aware"
    vary = parse_vary("retry.policy=naive, cost-aware")
    assert vary.key == "retry.policy" and vary.values == ("naive", "cost-aware")


@pytest.mark.parametrize("spec", ["nokey", "=1,2", "a.b=", "a..b=1", "a.b=1,,2"])
def test_a_malformed_vary_is_an_error(spec: str) -> None:
    with pytest.raises(ScenarioError, match="expected KEY=v1,v2"):
        parse_vary(spec)


def test_the_grid_is_every_combination_each_validated() -> None:
    base, _ = scenario_from(ALL_LEVERS)
    variants = grid(
        base,
        [parse_vary("cache.semantic.threshold=0.8,0.9"), parse_vary("providers.gpt-4o.rpm=100,200,300")],
        "t.toml",
    )
    assert len(variants) == 6
    assert [v.scenario.cache.semantic.threshold for v in variants[:3]] == [0.8] * 3
    assert [v.scenario.provider("gpt-4o").rpm for v in variants[:3]] == [100, 200, 300]
    assert variants[0].label() == "threshold=0.8, rpm=100"
    assert base.cache.semantic.threshold == 0.85  # the base is untouched


def test_a_bad_key_names_the_valid_keys_at_its_level() -> None:
    base, _ = scenario_from(ALL_LEVERS)
    with pytest.raises(ScenarioError) as caught:
        grid(base, [parse_vary("cache.semantic.thresold=0.8")], "t.toml")
    assert caught.value.field == "cache.semantic.thresold"
    assert "did you mean 'threshold'" in caught.value.reason
    assert "valid keys here: capacity, enabled, profile, threshold, ttl_s" in caught.value.reason


def test_a_bad_value_is_rejected_like_in_a_file() -> None:
    base, _ = scenario_from(ALL_LEVERS)
    with pytest.raises(ScenarioError, match=r"cache\.semantic\.threshold"):
        grid(base, [parse_vary("cache.semantic.threshold=1.5")], "t.toml")
    with pytest.raises(ScenarioError, match=r"router\.model\.x"):
        grid(base, [parse_vary("router.model.x=1")], "t.toml")


def test_cheap_share_sets_the_easy_side_of_the_classifier() -> None:
    base, _ = scenario_from(ALL_LEVERS)
    (variant,) = grid(base, [parse_vary("router.cheap_share=0.7")], "t.toml")
    routed = variant.scenario.router
    assert routed.enabled and routed.hard_to_expensive == base.router.hard_to_expensive
    assert router.cheap_share(routed, variant.scenario.prompts.hard_share) == pytest.approx(0.7)


def test_an_unreachable_cheap_share_says_what_is_reachable() -> None:
    base, _ = scenario_from(ALL_LEVERS)  # hard_share 0.25, hard_to_expensive 0.9: at most 0.775
    with pytest.raises(ScenarioError, match=r"unreachable .* reachable shares are 0\.025 to 0\.775"):
        grid(base, [parse_vary("router.cheap_share=0.8")], "t.toml")


def test_same_seed_same_table_serial_or_parallel() -> None:
    base, _ = scenario_from(ALL_LEVERS)
    variants = grid(
        base,
        [parse_vary("cache.semantic.threshold=0.8,0.95"), parse_vary("router.cheap_share=0.5,0.75")],
        "t",
    )
    serial = run_sweep("t", variants, 200, 3, 7, workers=1)
    again = run_sweep("t", variants, 200, 3, 7, workers=1)
    parallel = run_sweep("t", variants, 200, 3, 7, workers=2)
    assert sweep_table(serial) == sweep_table(again) == sweep_table(parallel)
    assert [p.cost for p in serial.points] == sorted(p.cost for p in serial.points)
    assert any(p.on_frontier for p in serial.points)
    # Same traffic at every point: the request count does not depend on the levers varied.
    assert len({p.summary["requests"] for p in serial.points}) == 1


def test_sweep_command_prints_the_table_writes_duckdb_and_draws_a_real_png(tmp_path: Path) -> None:
    plot, out = tmp_path / "frontier.png", tmp_path / "sweep.duckdb"
    args = [
        "sweep",
        OPTIMIZED,
        "--vary",
        "cache.semantic.threshold=0.8,0.9",
        "--vary",
        "retry.policy=naive,cost-aware",
    ]
    result = CliRunner().invoke(
        main, [*args, *SMALL, "--workers", "1", "--plot", str(plot), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "* = on the cost-quality frontier" in result.output
    assert "threshold" in result.output and "policy" in result.output
    data = plot.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 20_000
    with duckdb.connect(str(out), read_only=True) as db:
        rows = db.execute("SELECT count(*), count(*) FILTER (WHERE on_frontier) FROM sweep_points").fetchone()
    assert rows is not None and rows[0] == 4 and rows[1] >= 1


def test_sweep_json_has_every_point() -> None:
    args = ["sweep", OPTIMIZED, "--vary", "router.easy_to_expensive=0.05,0.5", *SMALL, "--format", "json"]
    result = CliRunner().invoke(main, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["varied"] == ["router.easy_to_expensive"] and len(report["points"]) == 2
    cheap, dear = report["points"]
    assert cheap["settings"] == {"router.easy_to_expensive": 0.05}
    assert cheap["cost_per_user_month_usd"]["mean"] < dear["cost_per_user_month_usd"]["mean"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vary", "cache.semantic.thresold=0.8"], "cache.semantic.thresold: unknown key (did you mean"),
        (["--vary", "router.cheap_share=0.99"], "router.cheap_share: 0.99 is unreachable"),
        (["--vary", "nonsense"], "expected KEY=v1,v2"),
        (["--vary", "traffic.mau=100,200"], "--vary: traffic.mau: not a variant setting; use --mau instead"),
        ([], "sweep needs at least one --vary"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["sweep", OPTIMIZED, *args, *SMALL])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--plot", "--out"])
def test_an_unwritable_output_is_one_line_and_exit_2(tmp_path: Path, flag: str) -> None:
    target = tmp_path / "no-such-folder" / "file"
    args = ["sweep", OPTIMIZED, "--vary", "retry.policy=naive", *SMALL, "--workers", "1", flag, str(target)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(f"margins: {target}: (file): cannot be written")
    assert "Traceback" not in result.output


def test_a_cap_sweep_shows_who_feels_the_cap() -> None:
    args = ["sweep", OPTIMIZED, "--vary", "cap.monthly_usd=0.01,100", *SMALL, "--workers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[1]
    assert "users at cap" in header and "denied" in header and "degraded" in header
    tight, loose = result.output.splitlines()[3:5]  # cheapest first: the tight cap
    assert tight.split()[1] == "0.01" and loose.split()[1] == "100"
