"""`margins store check | repair`: verify an event store, or rebuild what its journal and log allow."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from budget.errors import BudgetError

STORE_PATH = click.Path(path_type=Path, file_okay=False)


@click.group("store")
def store_group() -> None:
    """Check, back up or repair an event store.

    `check` reads everything and changes nothing; `backup` copies a consistent, verified cut of a store,
    also while an enforcer writes to it; `repair` rebuilds the manifest and the usage and rollup segments
    from the journal and the log while no enforcer runs.
    """


@store_group.command("check")
@click.argument("store", type=STORE_PATH)
@click.pass_context
def check(ctx: click.Context, store: Path) -> None:
    """Verify STORE: the manifest, each segment's size, sha256 and row count, the log's lines, seq
    contiguity and the snapshots. Prints what it checked and exits 0, or one line per problem (on
    stderr) and exits 2. Safe beside a running enforcer."""
    from budget.store.check import check_store
    from budget.store.manifest import repair_hint

    try:
        report = check_store(store)
    except BudgetError as error:
        click.echo(f"margins store check: {error}", err=True)
        ctx.exit(2)
    for line in report.checked:
        click.echo(line)
    if not report.problems:
        click.echo("ok")
        return
    for problem in report.problems:
        click.echo(f"margins store check: {store}: {problem}", err=True)
    click.echo(f"{len(report.problems)} problems; {repair_hint(store)}")
    ctx.exit(2)


@store_group.command("backup")
@click.argument("store", type=STORE_PATH)
@click.argument("dest", type=click.Path(path_type=Path))  # a file there: our one-line refusal
@click.pass_context
def backup(ctx: click.Context, store: Path, dest: Path) -> None:
    """Copy STORE into DEST (a new or empty directory): one consistent cut of its events, safe beside a
    running enforcer.

    Every segment the manifest lists is copied and checked against its sha256 as it is copied, with the
    log lines up to the cut and the newest ledger snapshot at or below it; DEST's manifest is written
    last, so an interrupted backup never looks complete. Prints what was copied. A damaged segment, a
    DEST that is not empty, or a STORE whose files do not add up: one line, exit 2, and no manifest in
    DEST."""
    from budget.store.backup import backup_store

    try:
        report = backup_store(store, dest, say=click.echo)
    except BudgetError as error:
        click.echo(f"margins store backup: {error}", err=True)
        ctx.exit(2)
    except OSError as error:
        click.echo(f"margins store backup: {error.filename or dest}: {error.strerror or error}", err=True)
        ctx.exit(2)
    snapshot = "no snapshot" if report.snapshot_seq is None else f"snapshot at seq {report.snapshot_seq}"
    click.echo(
        f"backed up {report.events} events (seq 0..{report.last_seq}) from {store} to {dest}: "
        f"{report.segments} segments, {report.log_lines} log lines, {snapshot}; "
        f"{report.bytes} bytes in {report.seconds:.2f} s"
    )


@store_group.command("repair")
@click.argument("store", type=STORE_PATH)
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@click.pass_context
def repair(ctx: click.Context, store: Path, dry_run: bool) -> None:
    """Rebuild STORE's manifest, usage and rollup segments from its journal segments and log.

    Keeps whatever it cannot use in STORE/quarantine/, deletes nothing it cannot prove redundant, and
    refuses while an enforcer has the store open, or when some seqs are in no file (exit 2)."""
    from budget.store.repair import repair_store

    try:
        repair_store(store, dry_run=dry_run, say=click.echo)
    except BudgetError as error:
        click.echo(f"margins store repair: {error}", err=True)
        ctx.exit(2)
    except OSError as error:
        click.echo(f"margins store repair: {store}: {error}", err=True)
        ctx.exit(2)


if __name__ == "__main__":
    sys.exit(store_group())
