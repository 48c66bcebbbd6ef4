"""Reading scenario files: TOML, `extends` (one base or a list, merged key by key), then validation.

The schema and its defaults are sim/model/scenario.py; the checks that turn a table into it are
sim/model/scenario_checks.py. This module is the edge that reads files.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from budget.domain.prices import PriceCatalog
from sim.errors import ScenarioError, UnreadableFile
from sim.io.user_files import read_text
from sim.model.scenario import Scenario
from sim.model.scenario_checks import merge, parse_scenario


def load_scenario(path: str | Path) -> tuple[Scenario, PriceCatalog]:
    """Read and validate a scenario file; returns it with the price catalog it runs against.

    `extends = "other.toml"` (relative to the file) starts from another scenario: this file's tables
    merge into it key by key, so a what-if names only what it changes. A list of files layers them in
    order (e.g. a base scenario, then a measured semantic-cache profile).
    """
    return parse_scenario(read_table(path), str(path))


def read_table(path: str | Path) -> dict[str, Any]:
    """A scenario file's table merged onto the tables it `extends`, not yet validated."""
    data = read_with_bases(Path(path))
    data.pop("extends", None)
    return data


def read_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A scenario file's table, merged onto the tables it `extends` (cycles and bad bases named).

    `extends` names one file or a list of them; later ones override earlier ones, the file itself
    overrides them all -- so a measured fragment (a router's shares, a semantic-cache profile) can be
    layered onto a base scenario."""
    where = str(path)
    try:
        data = tomllib.loads(read_text(path))
    except UnreadableFile as error:
        raise ScenarioError(where, "(file)", error.reason) from None
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(where, "(file)", f"not valid TOML: {error}") from None
    base_names = data.get("extends")
    if base_names is None:
        return data
    if isinstance(base_names, str):
        base_names = [base_names]
    if not (isinstance(base_names, list) and base_names and all(isinstance(n, str) for n in base_names)):
        raise ScenarioError(where, "extends", "expected the path of another scenario file, or a list of them")
    merged: dict[str, Any] = {}
    for base_name in base_names:
        merged = merge(merged, _read_base(path, base_name, seen))
    return merge(merged, data)


def _read_base(path: Path, base_name: str, seen: tuple[Path, ...]) -> dict[str, Any]:
    """One base of `path`, itself merged onto its bases; its name and description are not inherited."""
    where = str(path)
    base_path = (path.parent / base_name).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ScenarioError(where, "extends", f"{base_name!r} extends this file again (a cycle)")
    try:
        base = read_with_bases(base_path, (*seen, path.resolve()))
    except ScenarioError as error:
        raise ScenarioError(where, "extends", f"{base_name!r}: {error}") from None
    base.pop("name", None)
    base.pop("description", None)
    base.pop("extends", None)
    return base
