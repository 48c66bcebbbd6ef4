"""`margins init`: copy the starter scenarios and the caps example into a directory to run and edit."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from sim.cli.common import fail
from sim.cli.extras import extra_installed

SEED_STORY = ("naive-mvp.toml", "optimized.toml")


@click.command("init")
@click.argument(
    "directory", default="margins", type=click.Path(file_okay=False, path_type=Path), required=False
)
@click.option("--force", is_flag=True, help="Overwrite starter files that already exist in DIRECTORY")
def init(directory: Path, force: bool) -> None:
    """Copy the starter files into DIRECTORY (default ./margins): the seed story, each cost lever alone,
    the launch spike, the measured fragments they extend, and the enforcer's caps.example.toml."""
    from sim.errors import StarterError
    from sim.io.starter import copy_starter, starter_files, starter_root

    try:
        written = copy_starter(directory, starter_files(starter_root()), force=force)
    except StarterError as error:
        fail(str(error))
    click.echo(f"wrote {len(written)} files:")
    for path in written:
        click.echo(f"  {path}")
    naive, optimized = (shlex.quote(str(directory / "seed-story" / name)) for name in SEED_STORY)
    click.echo("next, the seed story at 1,000 monthly active users (naive MVP vs optimized):")
    if not extra_installed("sim"):
        click.echo("  pip install 'margins[sim]'")
    click.echo(f"  margins compare {naive} {optimized} --mau 1000")
