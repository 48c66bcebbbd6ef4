"""The budget side of the `margins` command line: `enforce` and `spend`.

sim.cli mounts these commands on the one `margins` group (budget never imports sim).
"""

from __future__ import annotations

import click

from budget.enforce_cli import enforce
from budget.spend_cli import spend

COMMANDS: list[click.Command] = []

COMMANDS.append(spend)
COMMANDS.append(enforce)
