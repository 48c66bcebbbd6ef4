"""Where a command's runs go: `--workers N` (a local process pool) or `--executor dask://HOST:PORT` (a Dask
cluster, the `cluster` extra). Shared by the workbench's commands and by `simulate` and `compare`, so that
their flags take the same values and fail with the same lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from sim.cli.common import fail
from sim.cli.extras import exit_needing, extra_installed

if TYPE_CHECKING:
    from sim.workbench.executor import Cluster


def executor_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--executor dask://HOST:PORT`: run the points on a Dask cluster instead of this machine's cores."""

    def parse(ctx: click.Context, _param: click.Parameter, value: str | None) -> Cluster | None:
        if value is None:
            return None
        from sim.errors import ArgumentError
        from sim.workbench.executor import parse_cluster

        try:
            cluster = parse_cluster(value)
        except ArgumentError as error:
            raise click.BadParameter(error.reason) from None
        if not extra_installed("cluster"):
            exit_needing(f"{ctx.info_name} --executor", "cluster")
        return cluster

    return click.option(
        "--executor",
        "cluster",
        metavar="dask://HOST:PORT",
        callback=parse,
        help="Run the points on this Dask cluster (the cluster extra; every worker needs this margins)",
    )(command)


def only_one_place(workers: int | None, cluster: Cluster | None) -> None:
    """--workers sizes the local pool, --executor replaces it: asking for both is a mistake to name."""
    if workers is not None and cluster is not None:
        fail("--workers and --executor exclude each other: the cluster's workers run the points")


def replication_places(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--workers N` and `--executor` for `simulate` and `compare`: where their (MAU level, replication)
    runs go. Unlike a sweep's, the default is one process -- this one -- as before these flags existed."""
    command = executor_option(command)
    return click.option(
        "--workers",
        type=click.IntRange(1, 256),
        help="Processes for the runs, each MAU level's replications among them (default: 1, this one; "
        "with --engine days, each process holds a part's working set)",
    )(command)
