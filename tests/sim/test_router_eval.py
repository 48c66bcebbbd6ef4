"""`margins eval router`: the rule classifier, its metrics, the DuckDB history, the shares a scenario loads,
and one-line errors for bad eval sets and rules files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from sim.calibration.router_eval import Confusion, Example, Rules, classify, evaluate, parse_rules
from sim.calibration.router_eval_io import load_rules, read_eval_set
from sim.cli import main
from sim.errors import RulesError
from sim.io.scenarios import load_scenario
from sim.model.scenario_checks import parse_scenario

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_SET = ROOT / "scenarios/router/eval-set.jsonl"
SHIPPED_RULES = ROOT / "scenarios/router/router.rules"

RULES: dict[str, Any] = {
    "min_words": 8,
    "hard": [
        {"name": "fraud", "pattern": r"(?i)\b(fraud|stolen)\b"},
        {"name": "dispute", "keywords": ["dispute", "charged twice"]},
    ],
}


@pytest.fixture
def rules() -> Rules:
    return parse_rules(RULES, "rules.toml")


@pytest.mark.parametrize(
    ("text", "label", "reasons"),
    [
        ("My card was STOLEN", "hard", ("fraud",)),
        ("I want to dispute this", "hard", ("dispute",)),
        ("I was Charged Twice", "hard", ("dispute",)),
        ("one two three four five six seven eight", "hard", ("min_words",)),
        ("fraud and a dispute in a message of eight words", "hard", ("fraud", "dispute", "min_words")),
        ("what time is it", "easy", ()),
        ("is the disputed item here", "easy", ()),  # keywords match whole words only
    ],
)
def test_each_rule_kind_fires_and_is_named(
    rules: Rules, text: str, label: str, reasons: tuple[str, ...]
) -> None:
    verdict = classify(text, rules)
    assert (verdict.label, verdict.reasons) == (label, reasons)


def test_typographic_apostrophes_match_rules_written_with_plain_ones() -> None:
    rules = parse_rules({"hard": [{"keywords": ["don't recognise"]}]}, "r.toml")
    assert classify("I don\u2019t recognise this", rules).reasons == ("hard[0]",)


def test_metrics_match_a_hand_computed_confusion_matrix(rules: Rules) -> None:
    examples = [
        Example("card stolen", "hard"),  # hard -> expensive
        Example("a fraud", "hard"),  # hard -> expensive
        Example("something odd", "hard"),  # hard -> cheap (missed)
        Example("what time is it", "easy"),  # easy -> cheap
        Example("weather today", "easy"),  # easy -> cheap
        Example("is my dispute form online", "easy"),  # easy -> expensive
        Example("define a word", "easy"),  # easy -> cheap
    ]
    result = evaluate(examples, rules)
    assert result.confusion == Confusion(easy_cheap=3, easy_expensive=1, hard_cheap=1, hard_expensive=2)
    assert result.confusion.accuracy == pytest.approx(5 / 7)
    assert result.confusion.hard_to_expensive == pytest.approx(2 / 3)
    assert result.confusion.easy_to_expensive == pytest.approx(1 / 4)
    counts = {r.name: (r.on_hard, r.on_easy) for r in result.rule_counts}
    assert counts == {"fraud": (2, 0), "dispute": (0, 1), "min_words": (0, 0)}
    assert [e.text for e, _ in result.misses()] == ["something odd", "is my dispute form online"]


def write_set(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_rules(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    return write_set(
        tmp_path / "set.jsonl",
        [
            {"text": "my card was stolen", "label": "hard"},
            {"text": "I think this is fraud", "label": "hard", "source": "kept but ignored"},
            {"text": "why did this happen to me", "label": "hard"},
            {"text": "what time is it", "label": "easy"},
            "",
            {"text": "a stolen bike in a film", "label": "easy"},
        ],
    )


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    return write_rules(tmp_path / "rules.toml", "[[hard]]\nname = 'fraud'\npattern = '(?i)fraud|stolen'\n")


def run(*args: str) -> Any:
    return CliRunner().invoke(main, ["eval", "router", *args])


def test_the_command_prints_the_matrix_and_shares(small_set: Path, rules_file: Path) -> None:
    result = run("--set", str(small_set), "--rules", str(rules_file))
    assert result.exit_code == 0, result.output
    assert "accuracy            0.600" in result.output
    assert "hard_to_expensive   0.667" in result.output
    assert "easy_to_expensive   0.500" in result.output
    assert "line 6: easy -> hard [fraud]: a stolen bike in a film" in result.output


def test_the_history_gets_one_row_per_run_and_reports_the_change(
    tmp_path: Path, small_set: Path, rules_file: Path
) -> None:
    db = tmp_path / "history.duckdb"
    first = run("--set", str(small_set), "--rules", str(rules_file), "--db", str(db), "--format", "json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["change"] is None
    better = write_rules(tmp_path / "better.toml", "[[hard]]\npattern = '(?i)fraud|stolen|why'\nname = 'x'\n")
    second = run("--set", str(small_set), "--rules", str(better), "--db", str(db), "--format", "json")
    change = json.loads(second.output)["change"]
    assert change["rules_changed"] is True
    assert change["accuracy"] == pytest.approx(0.2)
    assert change["hard_to_expensive"] == pytest.approx(1 / 3)
    assert change["easy_to_expensive"] == pytest.approx(0.0)
    third = run("--set", str(small_set), "--rules", str(better), "--db", str(db))
    assert "(same rules): accuracy +0.000" in third.output
    with duckdb.connect(str(db)) as connection:
        rows = connection.execute(
            "SELECT n, hard_expensive, accuracy, set_sha256, rules_sha256 "
            "FROM router_eval_runs ORDER BY run_at"
        ).fetchall()
    assert [(n, h) for n, h, *_ in rows] == [(5, 2), (5, 3), (5, 3)]
    assert len({r[3] for r in rows}) == 1 and len({r[4] for r in rows}) == 2


def test_written_shares_load_into_a_scenario_through_extends(
    tmp_path: Path, small_set: Path, rules_file: Path
) -> None:
    shares = tmp_path / "shares.toml"
    result = run("--set", str(small_set), "--rules", str(rules_file), "--write-shares", str(shares))
    assert result.exit_code == 0, result.output
    fragment = tomllib.loads(shares.read_text())
    assert fragment == {"router": {"hard_to_expensive": 0.6667, "easy_to_expensive": 0.5}}
    parse_scenario(fragment, str(shares))  # the fragment alone is a valid scenario
    what_if = tmp_path / "what-if.toml"
    what_if.write_text('extends = "shares.toml"\nname = "measured"\n[router]\nenabled = true\n')
    scenario, _ = load_scenario(what_if)
    assert scenario.router.enabled
    assert (scenario.router.hard_to_expensive, scenario.router.easy_to_expensive) == (0.6667, 0.5)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["{not json"], "set.jsonl: line 1: not JSON"),
        (
            [{"text": "hi", "label": "hard"}, {"text": "x"}],
            'set.jsonl: line 2: label: expected "easy" or "hard", missing',
        ),
        (
            [{"text": "hi", "label": "medium"}],
            'set.jsonl: line 1: label: expected "easy" or "hard", got \'medium\'',
        ),
        ([{"label": "easy"}], "set.jsonl: line 1: text: missing"),
        ([[1, 2]], "set.jsonl: line 1: expected an object"),
        ([{"text": "hi", "label": "easy"}], "set.jsonl: (file): no 'hard' requests"),
    ],
)
def test_bad_set_lines_give_one_line_naming_file_and_line(
    tmp_path: Path, rules_file: Path, rows: list[Any], message: str
) -> None:
    bad = write_set(tmp_path / "set.jsonl", rows)
    result = run("--set", str(bad), "--rules", str(rules_file))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and message in result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[hard]]\npattern = '(unclosed'\n", "rules.toml: hard[0].pattern: not a valid regex"),
        ("[[hard]]\npatern = 'x'\n", "rules.toml: hard[0].patern: unknown key (did you mean 'pattern'?)"),
        ("min_word = 3\n", "rules.toml: min_word: unknown key (did you mean 'min_words'?)"),
        ("min_words = 0\n", "rules.toml: min_words: expected a whole number >= 1"),
        ("[[hard]]\nname = 'x'\n", "rules.toml: hard[0]: expected exactly one of pattern"),
        ("[[hard]]\nkeywords = []\n", "rules.toml: hard[0].keywords: expected a non-empty list"),
        ("description = 'nothing'\n", "rules.toml: hard: no rules"),
        ("[[hard]\n", "rules.toml: (file): not valid TOML"),
    ],
)
def test_bad_rules_give_one_line_naming_file_and_field(
    tmp_path: Path, small_set: Path, text: str, message: str
) -> None:
    bad = write_rules(tmp_path / "rules.toml", text)
    result = run("--set", str(small_set), "--rules", str(bad))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and message in result.output


def test_duplicate_rule_names_are_rejected() -> None:
    with pytest.raises(RulesError, match="two rules are named 'a'"):
        parse_rules({"hard": [{"name": "a", "pattern": "x"}, {"name": "a", "pattern": "y"}]}, "r.toml")


def test_the_shipped_set_has_both_labels_and_the_shipped_rules_load() -> None:
    examples = read_eval_set(SHIPPED_SET)
    assert len(examples) >= 100
    assert {e.label for e in examples} == {"easy", "hard"}
    for line in SHIPPED_SET.read_text().splitlines():
        row = json.loads(line)
        assert row["source"] and row["intent"]  # every row says where it was copied from
    result = evaluate(examples, load_rules(SHIPPED_RULES))
    assert result.confusion.total == len(examples)
    # The figures the README and scenarios/router/README.md quote for the shipped set and rules.
    c = result.confusion
    assert (c.easy_cheap, c.easy_expensive, c.hard_cheap, c.hard_expensive) == (80, 0, 13, 55)
