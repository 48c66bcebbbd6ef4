"""The unit-economics report: one self-contained HTML page and real PNG figures beside it."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from sim.cli import main
from sim.workbench.breakdown import top_share
from sim.workbench.report import focus_level

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
