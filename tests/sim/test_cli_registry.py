"""The `margins` group: its registry of commands, `--version`, and what start-up imports.

`margins --help` lists commands from the registry's texts without importing a command module, so the
registry must say what each command says of itself; and the help of the group or of a command must not
load the heavy libraries (checked on what a real process imports, not on how long it takes).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from budget.cli import COMMANDS as BUDGET_COMMANDS
from sim.cli import COMMANDS, LazyCommand, main
from sim.io.traces import FORMATS

ROOT = Path(__file__).resolve().parents[2]
# genai_prices: the price catalog's data, with pydantic and an HTTP client (~0.2 s), loads when priced.
HEAVY = ("numpy", "duckdb", "polars", "pyarrow", "matplotlib", "simpy", "torch", "genai_prices", "pydantic")
TINY_RUN = ("simulate", str(ROOT / "scenarios/seed-story/naive-mvp.toml"), "--mau", "100", "--days", "1")


def _subcommands() -> list[list[str]]:
    """The command lines that show a help: each registered command, and each command of a group."""
    lines = []
    for entry in COMMANDS:
        lines.append([entry.name])
        command = entry.resolve()
        if isinstance(command, click.Group):
            lines += [[entry.name, name] for name in command.commands]
    return lines


def imported_packages(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -X importtime -m sim.cli ARGS` and return it with the top-level packages it imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sim.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    packages = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "imported package" not in line:
            packages.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return result, packages


@pytest.mark.parametrize("entry", COMMANDS, ids=lambda entry: entry.name)
def test_every_registered_command_is_the_click_command_it_names(entry: LazyCommand) -> None:
    command = entry.resolve()
    assert isinstance(command, click.Command)
    assert command.name == entry.name
    assert command.get_short_help_str(limit=sys.maxsize) == entry.short_help


def test_the_registry_and_the_group_agree() -> None:
    names = [entry.name for entry in COMMANDS]
    assert len(names) == len(set(names)), "a command registered twice"
    assert {name for name, _, _ in BUDGET_COMMANDS} <= set(names)
    with click.Context(main) as ctx:
        assert main.list_commands(ctx) == sorted(names)
        for entry in COMMANDS:
            assert main.get_command(ctx, entry.name) is entry.resolve()
        assert main.get_command(ctx, "no-such-command") is None


def test_a_target_that_is_not_a_command_is_named() -> None:
    with pytest.raises(TypeError, match=re.escape("sim.cli.common:fail is a function, not a click command")):
        LazyCommand("fail", "sim.cli.common:fail", "").resolve()


@pytest.mark.parametrize("width", [80, 200])
def test_the_listing_reads_as_the_commands_themselves_would_list_it(width: int) -> None:
    """The same lines, cut at the same place, as a group holding the imported commands prints."""
    imported = click.Group("margins", commands={entry.name: entry.resolve() for entry in COMMANDS})
    expected = click.HelpFormatter(width=width)
    with click.Context(imported) as ctx:
        imported.format_commands(ctx, expected)
    listed = click.HelpFormatter(width=width)
    with click.Context(main) as ctx:
        main.format_commands(ctx, listed)
    assert listed.getvalue() == expected.getvalue()
    assert all(f"  {entry.name}  " in listed.getvalue() for entry in COMMANDS)


def test_version_comes_from_the_installed_package() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"margins, version {importlib.metadata.version('margins')}\n"


@pytest.mark.parametrize("command", ["replay", "fit"])
def test_trace_format_help_names_every_format(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=300)
    assert result.exit_code == 0
    assert " | ".join(FORMATS) in result.output


@pytest.mark.parametrize("line", [[], *_subcommands()], ids=lambda line: " ".join(line) or "margins")
def test_help_imports_no_heavy_library(line: list[str]) -> None:
    result, packages = imported_packages(*line, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("Usage:")
    assert "click" in packages  # the import list was read
    assert sorted(packages.intersection(HEAVY)) == []


def test_simulate_loads_duckdb_and_polars_only_to_write_them(tmp_path: Path) -> None:
    result, packages = imported_packages(*TINY_RUN)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "numpy" in packages and "simpy" in packages
    assert sorted(packages.intersection({"duckdb", "polars", "pyarrow", "matplotlib"})) == []
    result, packages = imported_packages(*TINY_RUN, "--out", str(tmp_path / "run.duckdb"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"duckdb", "polars"} <= packages
