"""The `margins` command line: one group, the forecasting commands, and the budget side's commands.

Every command is a registry entry -- its name, where its click command lives, and its short help -- so
`margins --help` lists them all without importing one, and `margins spend` never imports the simulator
nor `margins simulate` the enforcer. A command module imports click and light stdlib at module level;
numpy, DuckDB, polars and the heavy margins modules load inside the command when it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import click

from budget.cli import COMMANDS as BUDGET_COMMANDS
from sim.cli.extras import exit_needing, extra_installed, is_missing_dependency, needs_extra_command


class LazyCommand(NamedTuple):
    """A command of the group, imported only when run or asked for its own help."""

    name: str
    target: str  # "module:attribute" of the click command
    short_help: str  # what `margins --help` lists: the command's first sentence, as click derives it

    def resolve(self) -> click.Command:
        """Import the command's module and return its click command."""
        module, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is a {type(command).__name__}, not a click command")
        return command


COMMANDS: tuple[LazyCommand, ...] = (
    *(LazyCommand(*entry) for entry in BUDGET_COMMANDS),
    LazyCommand(
        "simulate",
        "sim.cli.forecast:simulate",
        "Forecast spend and quality of SCENARIO (a TOML file) at each MAU level.",
    ),
    LazyCommand(
        "compare",
        "sim.cli.forecast:compare",
        "Run SCENARIOS on the same seed (the same traffic) and show them side by side with deltas.",
    ),
    LazyCommand(
        "sweep",
        "sim.cli.workbench:sweep",
        "Run every combination of the --vary values on the same traffic, cheapest first, frontier marked.",
    ),
    LazyCommand(
        "goal-seek",
        "sim.cli.workbench:goal_seek_command",
        "Which configurations keep the p90 user-month under a limit (and quality above a floor), best first.",
    ),
    LazyCommand(
        "report",
        "sim.cli.workbench:report",
        "Write the unit-economics report of SCENARIO: one self-contained HTML page with its figures.",
    ),
    LazyCommand(
        "replay",
        "sim.cli.replay:replay",
        "Replay TRACE (real arrival times and token counts) and print the same figures as `simulate`.",
    ),
    LazyCommand(
        "fit",
        "sim.cli.fit:fit",
        "Print a scenario (TOML) that runs as written and looks like the observed usage: users, sessions, "
        "messages, token distributions, the repeat rate (with prompt_hash), the models, their failures and "
        "the caches observed; nothing the usage does not show is invented (no failures, no rate limits).",
    ),
    LazyCommand(
        "backtest",
        "sim.cli.backtest:backtest",
        "Fit on the usage before --train-until, forecast the horizon after it, and print forecast vs actual "
        "(cost, requests, tokens, per model, per user decile) with a prediction interval, beside the naive "
        '"same as the last period" forecast.',
    ),
    LazyCommand(
        "forecast-error",
        "sim.cli.forecast_error:forecast_error",
        "Compare forecast spend with actual spend overall, per model and per user decile; the comparison is "
        "also written into the forecast file (views forecast_error_overall, _by_model, _by_decile).",
    ),
    LazyCommand("eval", "sim.cli.eval:eval_group", "Measure a cost lever's model against labelled data."),
    LazyCommand(
        "calibrate",
        "sim.cli.calibrate:calibrate_group",
        "Measure a cost lever's model parameters from labelled data.",
    ),
    LazyCommand(
        "prices",
        "sim.cli.prices:prices",
        "What MODELS are charged per 1M tokens (every model of the catalog when none is named).",
    ),
    LazyCommand(
        "init",
        "sim.cli.init:init",
        "Copy the starter files into DIRECTORY (default ./margins): the seed story, each cost lever alone, "
        "the launch spike, the measured fragments they extend, and the enforcer's caps.example.toml.",
    ),
)
BUDGET_COMMAND_NAMES = frozenset(name for name, _target, _help in BUDGET_COMMANDS)
# Commands the core install runs (`pip install margins`): no extra to name.
CORE_COMMAND_NAMES = frozenset({"init", "prices"})


class LazyGroup(click.Group):
    """A click group whose registered commands are imported only when one of them is used. A command whose
    optional extra is not installed -- its module, or what it imports when run, is missing a third-party
    package -- prints the extra to install and exits with code 2."""

    def __init__(self, *args: Any, registry: Sequence[LazyCommand] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registry = {entry.name: entry for entry in registry}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.registry})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.registry:
            try:
                return self.registry[cmd_name].resolve()
            except ModuleNotFoundError as missing:
                extra = extra_for(cmd_name)
                if extra is None or not is_missing_dependency(missing):
                    raise
                return needs_extra_command(cmd_name, extra)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as missing:
            command = ctx.invoked_subcommand
            extra = extra_for(command) if command in self.registry else None
            if command is None or extra is None or not is_missing_dependency(missing):
                raise
            exit_needing(command, extra)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of `--help`, from the registry's short helps: no command module is imported.

        Each line is shortened as click shortens a command's own help, so the listing reads the same as
        when every command was imported to ask for it.
        """
        rows = []
        for name in self.list_commands(ctx):
            entry = self.registry.get(name)
            command = self._listed(name, entry) if entry else self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command))
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)  # click.Group's own arithmetic
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])

    @staticmethod
    def _listed(name: str, entry: LazyCommand) -> click.Command:
        """What the listing shows for a registered command: its short help, or the extra it lacks."""
        extra = extra_for(name)
        if extra is not None and not extra_installed(extra):
            return click.Command(name, help=f"(needs the {extra} extra)")
        return click.Command(name, help=entry.short_help)


def extra_for(cmd_name: str) -> str | None:
    """The optional extra a command needs: the enforcer's commands `enforce`, the simulator's `sim`, the
    core install's commands none."""
    if cmd_name in CORE_COMMAND_NAMES:
        return None
    return "enforce" if cmd_name in BUDGET_COMMAND_NAMES else "sim"


@click.group(cls=LazyGroup, registry=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="margins", prog_name="margins")
def main() -> None:
    """margins: forecast and enforce what LLM features cost."""
