"""`margins fit`: a scenario's traffic fitted from the enforcer's store or a trace, printed as TOML."""

from __future__ import annotations

import re

import click

from sim.cli.common import fail


@click.command()
@click.option("--store", "store", type=click.Path(file_okay=False), help="The enforcer's event store")
@click.option("--month", help="The month to fit from the store, YYYY-MM")
@click.option("--trace", type=click.Path(dir_okay=False), help="A trace file instead of a store")
@click.option("--trace-format", help="azure | mooncake | usage-jsonl (default: told from the file)")
@click.option(
    "--model",
    help="Price every call at this model (a trace's default: gpt-4o-mini; usage events name their own)",
)
def fit(
    store: str | None, month: str | None, trace: str | None, trace_format: str | None, model: str | None
) -> None:
    """Print a scenario (TOML) that runs as written and looks like the observed usage: users, sessions,
    messages, token distributions, the repeat rate (with prompt_hash), the models, their failures and the
    caches observed; nothing the usage does not show is invented (no failures, no rate limits)."""
    from sim.calibration.fit import (
        fit_scenario,
        observed_from_events,
        read_store_usage,
        read_trace_observed,
        to_toml,
    )
    from sim.errors import SimError
    from sim.model.scenario_checks import parse_scenario

    if (store is None) == (trace is None):
        fail("fit needs one source: --store PATH --month YYYY-MM, or --trace FILE")
    try:
        if store is not None:
            if month is None or not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
                fail(f"--month: expected YYYY-MM, got {month!r}")
            where = f"{store} (month {month})"
            observed = observed_from_events(read_store_usage(store, month), where)
            source = f"the store {store}, month {month}"
        else:
            assert trace is not None
            where = trace
            observed = read_trace_observed(trace, trace_format)
            source = f"the trace {trace}"
        table, notes = fit_scenario(observed, model, where)
        text = to_toml(table, source, notes)
        import tomllib

        parse_scenario(tomllib.loads(text), "(fitted)")  # what is printed always loads
    except SimError as error:
        fail(str(error))
    click.echo(text, nl=False)
