"""The starter files `margins init` copies: scenarios to run and edit, and the enforcer's caps example.

A wheel ships them inside the package (`sim/_starter/`, mapped from the top-level `scenarios/` and
`deploy/` by pyproject.toml); a repository checkout -- an editable install -- reads the top-level files
themselves, so each starter file has one source to edit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sim.errors import StarterError

CAPS_EXAMPLE = PurePosixPath("deploy/caps.example.toml")

# Relative to scenarios/: the seed story, each lever alone, the launch spike, and the fragments these
# extend (every `extends` must resolve inside the copy; tests/sim/test_init.py checks it).
STARTER_SCENARIOS = (
    "seed-story/*.toml",
    "levers/*.toml",
    "launch-spike*.toml",
    "semantic/*-profile.toml",
    "semantic/README.md",
    "router/measured-shares.toml",
)


@dataclass(frozen=True, slots=True)
class StarterFile:
    """One file to copy: where it comes from, and its path inside the target directory."""

    source: Path
    target: PurePosixPath


def starter_root() -> Path:
    """The directory holding `scenarios/` and `deploy/caps.example.toml`: inside the installed package
    (a wheel), else the repository checkout this package was imported from (an editable install)."""
    package = Path(__file__).resolve().parents[1]
    for root in (package / "_starter", package.parent):
        if (root / "scenarios").is_dir() and (root / CAPS_EXAMPLE).is_file():
            return root
    raise StarterError(
        f"{package}: the starter files are missing (neither {package / '_starter'} nor a checkout's "
        "scenarios/ and deploy/); reinstall margins"
    )


def starter_files(root: Path) -> list[StarterFile]:
    """Every starter file under `root`, scenarios keeping their layout and the caps example at the top."""
    scenarios = root / "scenarios"
    files = [
        StarterFile(path, PurePosixPath(path.relative_to(scenarios).as_posix()))
        for pattern in STARTER_SCENARIOS
        for path in sorted(scenarios.glob(pattern))
    ]
    files.append(StarterFile(root / CAPS_EXAMPLE, PurePosixPath(CAPS_EXAMPLE.name)))
    return files


def copy_starter(directory: Path, files: list[StarterFile], force: bool = False) -> list[Path]:
    """Copy `files` into `directory` (created if need be) and return the paths written. Refuses, writing
    nothing, when any of them exists already, unless `force`."""
    targets = [directory / file.target for file in files]
    existing = [target for target in targets if target.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more starter file(s))" if len(existing) > 1 else ""
        raise StarterError(f"{existing[0]}: already exists{more}; pass --force to overwrite")
    for file, target in zip(files, targets, strict=True):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file.source, target)
        except OSError as error:
            raise StarterError(f"{target}: cannot be written: {error.strerror or error}") from None
    return targets
