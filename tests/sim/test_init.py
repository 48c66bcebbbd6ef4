"""`margins init`: the starter files, copied from a checkout or an installed package, and still runnable."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from budget.service.settings import load_config
from sim.cli import main
from sim.errors import StarterError
from sim.io import starter
from sim.io.scenarios import load_scenario
from sim.io.starter import starter_files, starter_root

ROOT = Path(__file__).resolve().parents[2]


def init(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["init", *args])
    return result.exit_code, result.stdout, result.stderr


def copied(directory: Path) -> set[str]:
    return {path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file()}


def test_a_checkout_reads_the_top_level_files() -> None:
    assert starter_root() == ROOT


def test_init_copies_the_starter_set_and_names_each_file(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    code, out, err = init(str(demo))
    assert code == 0, err
    expected = {
        "caps.example.toml",
        "launch-spike.toml",
        "launch-spike-cost-aware.toml",
        "router/measured-shares.toml",
        "semantic/README.md",
        "semantic/banking77-profile.toml",
        "semantic/clinc150-profile.toml",
        "seed-story/naive-mvp.toml",
        "seed-story/optimized.toml",
        *(f"levers/{path.name}" for path in (ROOT / "scenarios/levers").glob("*.toml")),
    }
    assert copied(demo) == expected
    for name in expected:
        assert f"  {demo / name}\n" in out
        source = ROOT / ("deploy" if name == "caps.example.toml" else "scenarios") / name
        assert (demo / name).read_bytes() == source.read_bytes(), name


def test_every_copied_scenario_loads_as_the_original_with_its_extends_inside_the_copy(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    assert init(str(demo))[0] == 0
    scenarios = [path for path in demo.rglob("*.toml") if path.name != "caps.example.toml"]
    extending = 0
    for path in scenarios:
        bases = tomllib.loads(path.read_text()).get("extends", [])
        for base in [bases] if isinstance(bases, str) else bases:
            extending += 1
            target = (path.parent / base).resolve()
            assert target.is_relative_to(demo.resolve()) and target.is_file(), f"{path}: {base}"
        original = ROOT / "scenarios" / path.relative_to(demo)
        assert load_scenario(path) == load_scenario(original), path
    assert extending >= len(list((demo / "levers").glob("*.toml")))  # the levers extend the naive MVP
    load_config(demo / "caps.example.toml")


def test_the_printed_next_command_runs(tmp_path: Path) -> None:
    code, out, err = init(str(tmp_path / "my demo"))
    assert code == 0, err
    command = shlex.split(out.splitlines()[-1])
    assert command[:2] == ["margins", "compare"]
    result = CliRunner().invoke(main, command[1:])
    assert result.exit_code == 0, result.stderr
    assert "naive-mvp -> optimized at 1,000 MAU: cost per session" in result.stdout


def test_init_defaults_to_a_margins_directory_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert init()[0] == 0
    assert (tmp_path / "margins/seed-story/naive-mvp.toml").is_file()


def test_init_refuses_to_overwrite_and_writes_nothing_unless_forced(tmp_path: Path) -> None:
    mine = tmp_path / "demo/seed-story/optimized.toml"
    mine.parent.mkdir(parents=True)
    mine.write_text("# my edits\n")
    code, _, err = init(str(tmp_path / "demo"))
    assert code == 2
    assert err == f"margins: {mine}: already exists; pass --force to overwrite\n"
    assert mine.read_text() == "# my edits\n"
    assert copied(tmp_path / "demo") == {"seed-story/optimized.toml"}

    code, _, err = init(str(tmp_path / "demo"), "--force")
    assert code == 0, err
    assert mine.read_bytes() == (ROOT / "scenarios/seed-story/optimized.toml").read_bytes()


def test_init_into_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = init(str(blocker / "demo"))
    assert code == 2
    assert err.startswith(f"margins: {blocker / 'demo'}") and err.count("\n") == 1


def fake_tree(root: Path, prefix: str) -> None:
    (root / prefix / "scenarios/seed-story").mkdir(parents=True)
    (root / prefix / "scenarios/seed-story/naive-mvp.toml").write_text("")
    (root / prefix / "deploy").mkdir()
    (root / prefix / "deploy/caps.example.toml").write_text("")


@pytest.mark.parametrize(("layout", "expected"), [("sim/_starter", "sim/_starter"), (".", ".")])
def test_starter_root_finds_an_installed_package_or_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, expected: str
) -> None:
    """A wheel holds the files in sim/_starter/; a checkout at the top, beside sim/."""
    fake_tree(tmp_path, layout)
    monkeypatch.setattr(starter, "__file__", str(tmp_path / "sim/io/starter.py"))
    assert starter_root() == (tmp_path / expected).resolve()
    assert [file.target.as_posix() for file in starter_files(starter_root())] == [
        "seed-story/naive-mvp.toml",
        "caps.example.toml",
    ]


def test_missing_starter_files_are_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(starter, "__file__", str(tmp_path / "sim/io/starter.py"))
    with pytest.raises(StarterError, match="the starter files are missing"):
        starter_root()
