"""A command whose optional extra is missing names the extra to install and exits 2, never a traceback;
a missing module of margins' own is a bug and still raises."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import types
from collections.abc import Callable

import click
import pytest
from click.testing import CliRunner, Result

import sim.cli
from sim.cli import main
from sim.cli.extras import extra_installed, is_missing_dependency


def missing(name: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"No module named {name!r}", name=name)


@pytest.mark.parametrize(
    ("name", "third_party"),
    [("numpy", True), ("pyarrow.parquet", True), ("sim.model.engine", False), ("json", False), (None, False)],
)
def test_only_a_third_party_module_is_a_missing_dependency(name: str | None, third_party: bool) -> None:
    error = ModuleNotFoundError("No module", name=name)
    assert is_missing_dependency(error) is third_party


def importing(monkeypatch: pytest.MonkeyPatch, command_module: str, load: Callable[[], object]) -> None:
    """Make importing `command_module` run `load` instead; every other import goes through."""
    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> object:
        return load() if name == command_module else real(name, package)

    monkeypatch.setattr("sim.cli.importlib.import_module", import_module)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_a_command_module_that_cannot_be_imported_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> object:
        raise missing("numpy")

    importing(monkeypatch, "sim.cli.forecast", fail)
    result = run("simulate", "scenario.toml", "--mau", "1000", "--help")
    assert result.exit_code == 2
    assert result.stderr == "margins simulate needs the sim extra: pip install 'margins[sim]'\n"


def test_the_listing_marks_the_commands_whose_extra_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim.cli, "extra_installed", lambda extra: extra != "sim")
    listing = run("--help")
    assert listing.exit_code == 0
    assert re.search(r"^  compare +\(needs the sim extra\)$", listing.stdout, re.MULTILINE)
    assert re.search(r"^  simulate +\(needs the sim extra\)$", listing.stdout, re.MULTILINE)
    assert not re.search(r"^  spend +\(needs", listing.stdout, re.MULTILINE)


def test_a_command_that_imports_a_missing_package_when_run_names_its_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @click.command()
    @click.option("--store")
    def spend(store: str) -> None:
        raise missing("duckdb")

    importing(monkeypatch, "budget.cli.spend", lambda: types.SimpleNamespace(spend=spend))
    result = run("spend", "--store", "data")
    assert result.exit_code == 2
    assert result.stderr == "margins spend needs the enforce extra: pip install 'margins[enforce]'\n"


def test_a_missing_module_of_our_own_still_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> object:
        raise missing("sim.model.gone")

    importing(monkeypatch, "sim.cli.forecast", fail)
    result = run("simulate", "scenario.toml")
    assert isinstance(result.exception, ModuleNotFoundError)
    assert result.exception.name == "sim.model.gone"


def test_an_extra_is_installed_when_every_distribution_it_lists_is(monkeypatch: pytest.MonkeyPatch) -> None:
    assert extra_installed("sim") and extra_installed("enforce")
    requirements = [
        "click>=8.1",
        "numpy>=2.0; extra == 'sim'",
        "margins[sim]; extra == 'semantic'",
        'no-such-distribution-here>=1; extra == "semantic"',
    ]
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: requirements)
    assert extra_installed("sim")
    assert not extra_installed("semantic")
