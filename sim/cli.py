"""The `margins` command line: one group, the forecasting commands, and the budget side's commands."""

from __future__ import annotations

import click

from budget.cli import COMMANDS as BUDGET_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """margins: forecast and enforce what LLM features cost."""


for _command in BUDGET_COMMANDS:
    main.add_command(_command)
