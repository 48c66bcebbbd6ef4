"""Progress bars: on stderr when it is a terminal, never in JSON mode or when piped -- so what a command
prints to stdout is the same byte for byte either way."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from sim.calibration.embedding import model_version
from sim.calibration.embedding_cache import EmbeddingCache, text_key
from sim.calibration.query_sets import read_query_sets
from sim.io.progress import SILENT, on_terminal, progress_bar, wanted
from tests.sim.terminal_helpers import Ran, margins_on_terminal, margins_piped

ROOT = Path(__file__).resolve().parents[2]
NAIVE = str(ROOT / "scenarios/seed-story/naive-mvp.toml")
OPTIMIZED = str(ROOT / "scenarios/seed-story/optimized.toml")
TRACE = str(ROOT / "tests/data/azure_code_sample.csv")
BANKING = ROOT / "tests/data/semantic/banking77_sample.csv"
SMALL = ["--mau", "200,400", "--days", "3"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_wanted_only_on_a_terminal_and_not_for_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert on_terminal() and wanted() and wanted("table")
    assert not wanted("json")
    assert not wanted("table", enabled=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not on_terminal() and not wanted()


def test_without_a_bar_work_reports_to_silence_and_lines_still_reach_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with progress_bar("x", "run", show=False, total=3) as bar:
        assert bar is SILENT
        bar.expect(5)
        bar.advance()
        bar.note("working")
        bar.say("margins: a note")
    assert capsys.readouterr() == ("", "margins: a note\n")


def test_a_bar_counts_notes_and_says_above_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bar("simulate", "run", show=True) as bar:
        bar.expect(2)
        bar.note("1,000 MAU: caches")
        bar.advance()
        bar.say("margins: a note")
    drawn = terminal.getvalue()
    assert "simulate:" in drawn and "1/2" in drawn and "1,000 MAU: caches" in drawn
    assert "margins: a note\n" in drawn


def same_output_either_way(*args: str) -> tuple[Ran, Ran]:
    """Run `margins ARGS` with stderr on a terminal, then piped: stdout must not differ by a byte, and
    the piped run writes nothing on stderr."""
    on_terminal, piped = margins_on_terminal(*args), margins_piped(*args)
    assert on_terminal.returncode == piped.returncode == 0, piped.stderr.decode()
    assert on_terminal.stdout == piped.stdout
    assert piped.stderr == b""
    return on_terminal, piped


def test_simulate_shows_runs_and_their_phases_on_a_terminal() -> None:
    shown, _ = same_output_either_way("simulate", OPTIMIZED, *SMALL)
    drawn = shown.stderr.decode()
    assert "simulate:" in drawn and "/2 [" in drawn and "2/2" in drawn
    for phase in ("200 MAU: traffic", "200 MAU: caches", "400 MAU: attempts, day 3 of 3", "figures"):
        assert phase in drawn, phase
    assert drawn.endswith("\r")  # the bar is erased when done: the terminal keeps only the output


def test_compare_counts_every_scenario_and_level() -> None:
    shown, _ = same_output_either_way("compare", NAIVE, OPTIMIZED, *SMALL)
    drawn = shown.stderr.decode()
    assert "compare:" in drawn and "4/4" in drawn
    assert "naive-mvp, 200 MAU" in drawn and "optimized, 400 MAU" in drawn


def test_json_output_has_no_bar_even_on_a_terminal() -> None:
    shown, _ = same_output_either_way("simulate", OPTIMIZED, *SMALL, "--format", "json")
    assert shown.stderr == b""


def test_sweep_counts_points_unless_told_not_to() -> None:
    args = ["sweep", OPTIMIZED, "--vary", "cache.semantic.threshold=0.9,0.95", "--mau", "200", "--days", "3"]
    shown, _ = same_output_either_way(*args, "--workers", "1")
    drawn = shown.stderr.decode()
    assert "sweep:" in drawn and "2/2" in drawn and "threshold=0.95: caches" in drawn
    assert margins_on_terminal(*args, "--workers", "1", "--no-progress").stderr == b""
    pooled = margins_on_terminal(*args, "--workers", "2").stderr.decode()
    assert "2 points on 2 processes" in pooled and "2/2" in pooled


def test_replay_shows_reading_then_the_run() -> None:
    shown, _ = same_output_either_way("replay", TRACE)
    drawn = shown.stderr.decode()
    assert "replay:" in drawn and "reading azure_code_sample.csv" in drawn and "attempts, day 1 of" in drawn
    assert "1/1" in drawn


def test_report_counts_its_runs_by_section(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    args = ["report", OPTIMIZED, "--baseline", NAIVE, *SMALL, "--workers", "1", "--out", str(out)]
    shown, _ = same_output_either_way(*args)
    drawn = shown.stderr.decode()
    # 2 levels, the optimized scenario's 6 levers, 2 levels of the baseline
    assert "report:" in drawn and "10/10" in drawn
    for section in ("MAU table: 200 MAU", "levers: ", "baseline naive-mvp: 400 MAU", "drawing the figures"):
        assert section in drawn, section


def test_calibrate_shows_the_threshold_sweep(tmp_path: Path) -> None:
    """With every embedding in the cache the command needs no model, so this runs without the extra."""
    queries = read_query_sets([BANKING])
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(len(queries.group_names), 16))
    vectors = centres[queries.groups] + 0.3 * rng.normal(size=(len(queries.texts), 16))
    keys = [text_key(text) for text in queries.texts]
    EmbeddingCache(tmp_path, model_version(), print).add(keys, vectors.astype(np.float32))
    args = ["calibrate", "semantic", "--pairs", str(BANKING), "--cache-dir", str(tmp_path)]
    shown, piped = margins_on_terminal(*args), margins_piped(*args)
    assert shown.returncode == piped.returncode == 0, piped.stderr.decode()
    assert piped.stderr == b""
    timing = re.compile(rb", [0-9.]+ s \(")  # the embedding time is the one figure that may differ
    assert timing.sub(b"", shown.stdout) == timing.sub(b"", piped.stdout)
    assert b"144 of 144 from the cache" in piped.stdout
    drawn = shown.stderr.decode()
    assert "144 of 144 from the cache" in drawn
    assert "threshold sweep:" in drawn and "lookup" in drawn
