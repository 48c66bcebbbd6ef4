"""`margins store check | repair`: verify an event store, or rebuild what its journal and log allow."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from budget.errors import BudgetError, StoreError

if TYPE_CHECKING:
    from budget.store.partitioned import Partition

STORE_PATH = click.Path(path_type=Path, file_okay=False)


@click.group("store")
def store_group() -> None:
    """Check, back up or repair an event store.

    `check` reads everything and changes nothing; `backup` copies a consistent, verified cut of a store,
    also while an enforcer writes to it; `repair` rebuilds the manifest and the usage and rollup segments
    from the journal and the log while no enforcer runs. Each also takes a partitioned root (the
    partitioned enforcer's ROOT/partition=<p>/): every partition's store in partition order.
    """


@store_group.command("check")
@click.argument("store", type=STORE_PATH)
@click.pass_context
def check(ctx: click.Context, store: Path) -> None:
    """Verify STORE: the manifest, each segment's size, sha256 and row count, the log's lines, seq
    contiguity and the snapshots. Prints what it checked and exits 0, or one line per problem (on
    stderr) and exits 2. Safe beside a running enforcer.

    On a partitioned root (STORE/partition=<p>/, the partitioned enforcer's) every partition's store is
    checked in partition order, its lines prefixed by its name; a partition with no events yet (empty,
    or only LOCK) is no problem."""
    from budget.store.check import check_store
    from budget.store.manifest import repair_hint

    try:
        partitions = _partitions(store)
        if not partitions:
            report = check_store(store)
    except BudgetError as error:
        click.echo(f"margins store check: {error}", err=True)
        ctx.exit(2)
    if partitions:
        problems = _check_partitions(partitions)
    else:
        for line in report.checked:
            click.echo(line)
        problems = [f"{store}: {problem}" for problem in report.problems]
    if not problems:
        click.echo("ok")
        return
    for problem in problems:
        click.echo(f"margins store check: {problem}", err=True)
    click.echo(f"{len(problems)} problems; {repair_hint(store)}")
    ctx.exit(2)


def _check_partitions(partitions: list[Partition]) -> list[str]:
    """Check each partition's store, echoing its checked lines prefixed by its name; its problems, each
    naming the partition's path (a store that cannot be read at all: one problem, the others go on)."""
    from budget.store.check import CheckReport, check_store

    problems: list[str] = []
    for partition in partitions:
        name = partition.path.name
        if not partition.has_events:
            click.echo(f"{name}: no events yet")
            continue
        try:
            report = check_store(partition.path)
        except BudgetError as error:
            report = CheckReport(problems=[error.reason if isinstance(error, StoreError) else str(error)])
        for line in report.checked:
            click.echo(f"{name}: {line}")
        problems += [f"{partition.path}: {problem}" for problem in report.problems]
    return problems


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
    DEST.

    A partitioned root (STORE/partition=<p>/) is backed up partition by partition into
    DEST/partition=<p>/, each its own cut, taken as its copy begins: the cuts are apart by the time the
    earlier partitions take (ms for small stores, like `margins spend`'s cuts: each user's figures are
    one cut, totals not one instant). A partition with no events yet becomes an empty directory. The
    partitions appear in DEST only once all are copied."""
    from budget.store.backup import backup_partitions, backup_store

    try:
        partitions = _partitions(store)
        if partitions:
            events = backup_partitions(partitions, dest, say=click.echo)
            click.echo(f"backed up {events} events in {len(partitions)} partitions from {store} to {dest}")
            return
        report = backup_store(store, dest, say=click.echo)
    except BudgetError as error:
        click.echo(f"margins store backup: {error}", err=True)
        ctx.exit(2)
    except OSError as error:
        click.echo(f"margins store backup: {error.filename or dest}: {error.strerror or error}", err=True)
        ctx.exit(2)
    click.echo(report.summary(store, dest))


@store_group.command("repair")
@click.argument("store", type=STORE_PATH)
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@click.pass_context
def repair(ctx: click.Context, store: Path, dry_run: bool) -> None:
    """Rebuild STORE's manifest, usage and rollup segments from its journal segments and log.

    Keeps whatever it cannot use in STORE/quarantine/, deletes nothing it cannot prove redundant, and
    refuses while an enforcer has the store open, or when some seqs are in no file (exit 2).

    On a partitioned root (STORE/partition=<p>/) each partition's store is repaired in turn, its lines
    prefixed by its name; a partition whose enforcer runs is refused (one line) and the others are
    still repaired; exit 2 if any was refused."""
    try:
        partitions = _partitions(store)
    except BudgetError as error:
        click.echo(f"margins store repair: {error}", err=True)
        ctx.exit(2)
    if not partitions:
        if not _repair_one(store, dry_run, click.echo):
            ctx.exit(2)
        return
    refused = 0
    for partition in partitions:
        name = partition.path.name
        if not partition.has_events:
            click.echo(f"{name}: no events yet: nothing to repair")
            continue
        refused += not _repair_one(partition.path, dry_run, _echo_prefixed(name))
    if refused:
        click.echo(f"{refused} of {len(partitions)} partitions not repaired (see above)", err=True)
        ctx.exit(2)


def _repair_one(store: Path, dry_run: bool, say: Callable[[str], None]) -> bool:
    """Repair one store, its lines to `say`; False (the reason on stderr) when it was refused."""
    from budget.store.repair import repair_store

    try:
        repair_store(store, dry_run=dry_run, say=say)
    except BudgetError as error:
        click.echo(f"margins store repair: {error}", err=True)
        return False
    except OSError as error:
        click.echo(f"margins store repair: {store}: {error}", err=True)
        return False
    return True


def _echo_prefixed(name: str) -> Callable[[str], None]:
    return lambda line: click.echo(f"{name}: {line}")


def _partitions(store: Path) -> list[Partition]:
    """The partitions of a partitioned root; [] for anything else, which the plain commands judge (with
    their messages of today). StoreError for a malformed partitioned root."""
    from budget.store.partitioned import claims_partitions, list_partitions

    return list_partitions(store) if claims_partitions(store) else []


if __name__ == "__main__":
    sys.exit(store_group())
