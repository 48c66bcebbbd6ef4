"""Commands whose optional extra is missing: one line naming the extra to install, never a traceback.

`pip install margins` brings the application client and the command shell; the enforcer's commands need
`margins[enforce]` and the simulator's `margins[sim]` (pyproject.toml's optional-dependencies).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from typing import NoReturn

import click

# Our own top-level packages: a module of theirs that is missing is a bug, not a missing extra.
OWN_PACKAGES = frozenset({"budget", "sim"})


def is_missing_dependency(error: ModuleNotFoundError) -> bool:
    """Whether `error` is about a third-party package (what an extra installs), not about margins' own
    modules or the standard library's."""
    top_level = (error.name or "").partition(".")[0]
    return bool(top_level) and top_level not in OWN_PACKAGES and top_level not in sys.stdlib_module_names


def install_hint(command: str, extra: str) -> str:
    """The one line a command without its extra prints."""
    return f"margins {command} needs the {extra} extra: pip install 'margins[{extra}]'"


def exit_needing(command: str, extra: str) -> NoReturn:
    """Say which extra `command` needs, on stderr, and exit with code 2."""
    click.echo(install_hint(command, extra), err=True)
    sys.exit(2)


def needs_extra_command(command: str, extra: str) -> click.Command:
    """A stand-in for a command whose module cannot be imported: `margins --help` still lists it, and
    running it, with any arguments, prints what to install."""
    return click.Command(
        command,
        callback=lambda: exit_needing(command, extra),
        help=install_hint(command, extra),
        short_help=f"(needs the {extra} extra)",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


def extra_installed(extra: str) -> bool:
    """Whether every distribution `margins[extra]` requires is installed (True when margins' own metadata
    cannot be read: nothing to check against)."""
    try:
        requirements = importlib.metadata.requires("margins") or []
    except importlib.metadata.PackageNotFoundError:
        return True
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        if not re.search(rf"""extra\s*==\s*['"]{re.escape(extra)}['"]""", marker):
            continue
        name = re.split(r"[\s\[<>=!~;(]", spec.strip(), maxsplit=1)[0]
        if name == "margins":  # an extra that includes another one of ours
            continue
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return False
    return True
