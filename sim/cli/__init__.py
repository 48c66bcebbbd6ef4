"""The `margins` command line: one group, the forecasting commands, and the budget side's commands.

Commands from other modules are imported only when run (LazyGroup): `margins spend` should not pay for
importing the simulator, nor `margins simulate` for the enforcer.
"""

from __future__ import annotations

import importlib

import click

from budget.cli import LAZY_COMMANDS as BUDGET_COMMANDS
from sim.cli.extras import exit_needing, is_missing_dependency, needs_extra_command

# command name -> "module:attribute" of its click command
LAZY_COMMANDS = {
    **BUDGET_COMMANDS,
    "simulate": "sim.cli.forecast:simulate",
    "compare": "sim.cli.forecast:compare",
    "sweep": "sim.cli.workbench:sweep",
    "goal-seek": "sim.cli.workbench:goal_seek_command",
    "report": "sim.cli.workbench:report",
    "replay": "sim.cli.replay:replay",
    "fit": "sim.cli.fit:fit",
    "forecast-error": "sim.cli.forecast_error:forecast_error",
    "eval": "sim.cli.eval:eval_group",
    "calibrate": "sim.cli.calibrate:calibrate_group",
    "init": "sim.cli.init:init",
}


class LazyGroup(click.Group):
    """A click group whose commands from LAZY_COMMANDS are imported on first use. A command whose optional
    extra is not installed -- its module, or what it imports when run, is missing a third-party package --
    prints the extra to install and exits with code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, _, attribute = LAZY_COMMANDS[cmd_name].partition(":")
            try:
                command = getattr(importlib.import_module(module), attribute)
            except ModuleNotFoundError as missing:
                if not is_missing_dependency(missing):
                    raise
                return needs_extra_command(cmd_name, extra_for(cmd_name))
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as missing:
            command = ctx.invoked_subcommand
            if command not in LAZY_COMMANDS or not is_missing_dependency(missing):
                raise
            exit_needing(command, extra_for(command))


def extra_for(cmd_name: str) -> str:
    """The optional extra a command needs: the enforcer's commands `enforce`, the simulator's `sim`."""
    return "enforce" if cmd_name in BUDGET_COMMANDS else "sim"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """margins: forecast and enforce what LLM features cost."""
