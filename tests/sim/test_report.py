"""The unit-economics report: one self-contained HTML page and real PNG figures beside it."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from sim.cli import main
from sim.workbench.breakdown import top_share
from sim.workbench.quality_method import quality_sources
from sim.workbench.report import focus_level
from tests.sim.scenarios import scenario_from

ROOT = Path(__file__).resolve().parents[2]
NAIVE = str(ROOT / "scenarios/seed-story/naive-mvp.toml")
CAPPED = str(ROOT / "scenarios/caps/naive-cap-degrade.toml")
OPTIMIZED = str(ROOT / "scenarios/seed-story/optimized.toml")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(data: bytes) -> None:
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000  # a drawn figure, not an empty canvas
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 400 and height >= 200


def test_report_with_levers_and_a_baseline(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "report.html"
    args = ["report", OPTIMIZED, "--baseline", NAIVE, "--mau", "200,400", "--days", "3", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    for name in ("cost-per-user", "models", "levers"):
        assert_real_png((tmp_path / "nested" / f"report-{name}.png").read_bytes())
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == 3
    for data in embedded:
        assert_real_png(base64.b64decode(data))
    assert "http" not in page.replace("margins", "")  # nothing fetched: the page stands alone
    assert "200 MAU" in page and "400 MAU" in page
    for lever in (
        "exact cache",
        "semantic cache",
        "fragment cache",
        "router",
        "cost-aware retry",
        "streaming",
    ):
        assert f"<td>{lever}</td>" in page
    assert "Against the baseline: naive-mvp" in page
    assert "naive-mvp -&gt; optimized at 400 MAU: cost per session" in page


def test_report_of_a_capped_scenario_shows_the_cap(tmp_path: Path) -> None:
    out = tmp_path / "capped.html"
    result = CliRunner().invoke(main, ["report", CAPPED, "--mau", "300", "--days", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<h2>The cap</h2>" in page and "requests degraded" in page and "quality lost (points)" in page
    assert "This scenario uses no cost lever." in page
    assert not (tmp_path / "capped-levers.png").exists()


def test_report_bad_input_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", NAIVE, "--baseline", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "nope.toml: (file): no such file" in result.output


def test_focus_level_is_the_one_nearest_ten_thousand() -> None:
    assert focus_level([1000, 10000, 100000]) == 10000
    assert focus_level([200, 400]) == 400
    assert focus_level([50_000]) == 50_000


def test_top_share() -> None:
    costs = np.array([1.0] * 99 + [101.0])
    assert top_share(costs, 0.01) == 101.0 / 200.0
    assert top_share(np.zeros(10)) == 0.0


def test_the_quality_method_says_which_inputs_the_scenario_states() -> None:
    table = {
        "router": {"enabled": True, "cheap_model": "gpt-4o-mini", "expensive_model": "gpt-4o"},
        "quality": {"models": {"gpt-4o": {"easy": 96, "hard": 91}}},
        "cache": {"semantic": {"enabled": True}},
        "providers": {"gpt-4o-mini": {"bad_completion_rate": 0.05}},
    }
    scenario, _ = scenario_from(table)
    sources = {name: (value, source) for name, value, source in quality_sources(scenario)}
    assert sources["gpt-4o: easy / hard eval score"] == (
        "96 / 91",
        "[quality.models] in the scenario (your eval set)",
    )
    assert sources["gpt-4o-mini: easy / hard eval score"][1].endswith("(assumed)")
    assert sources["semantic cache: true / false hits at its threshold"][1].endswith("(assumed)")
    assert sources["gpt-4o-mini: bad completion rate"][0] == "0.05"
    assert sources["gpt-4o: bad completion rate"][1] == "default (assumed)"
    measured, _ = scenario_from({"cache": {"semantic": {"enabled": True, "profile": [[0.9, 0.5, 0.01]]}}})
    profile = {name: source for name, _, source in quality_sources(measured)}
    assert profile["semantic cache: true / false hits at its threshold"].startswith("the scenario's profile")


def test_the_report_states_how_quality_is_scored(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    args = ["report", NAIVE, "--mau", "200", "--days", "2", "--out", str(out), "--workers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<h2>How quality is scored</h2>" in page
    assert "<td>gpt-4o: easy / hard eval score</td><td>94 / 89</td>" in page


def test_report_with_replications_labels_both_intervals_of_its_mau_table(tmp_path: Path) -> None:
    out = tmp_path / "replicated.html"
    args = ["report", NAIVE, "--mau", "150", "--days", "2", "--replications", "3", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "a = 95% CI of the mean, b = 95% prediction interval for one month" in page
    assert re.search(r"<td>monthly cost</td><td>\$[\d.,]+ ± \$[\d.,]+ \[± \$[\d.,]+\]</td>", page)
