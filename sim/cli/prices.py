"""`margins prices`: what each model is charged per 1M tokens, and from which catalog.

It runs with the core install. It lives beside the simulator's commands, not the enforcer's, because
`--scenario` reads a scenario file with its `extends` (budget never imports sim); `--config` reads the
enforcer's caps config.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sim.cli.common import fail

if TYPE_CHECKING:
    from budget.domain.prices import ModelPrice, PriceCatalog, Rates

FIELDS = ("input", "cached_input", "cache_write", "output")
HEADER = ("model", "catalog id", "prompt tokens", "input", "cached input", "cache write", "output", "note")


@click.command("prices")
@click.argument("models", nargs=-1)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The enforcer's caps config: its [prices] overrides apply.",
)
@click.option(
    "--scenario",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A scenario file: its [prices] overrides apply, as a forecast of it charges.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def prices(models: tuple[str, ...], config: Path | None, scenario: Path | None, fmt: str) -> None:
    """What MODELS are charged per 1M tokens (every model of the catalog when none is named).

    Input, cached input, cache write and output, per tier of prompt size, at today's prices, with the
    catalog's name and the day its data was published; a model whose price changes on a date says so.
    With --config or --scenario their [prices] overrides apply. A model the catalog does not know is one
    line naming the closest names, exit code 2.
    """
    import json

    catalog = _catalog(config, scenario)
    names = list(models) or list(catalog.models)
    unknown = [str(catalog.unknown(name)) for name in names if name not in catalog]
    if unknown:
        fail("; ".join(unknown))
    report = price_report(catalog, names)
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(price_table(report))


def _catalog(config: Path | None, scenario: Path | None) -> PriceCatalog:
    from budget.domain.catalog import default_catalog
    from budget.errors import BudgetError
    from sim.errors import SimError

    if config is not None and scenario is not None:
        fail("--config and --scenario: give one (the enforcer's prices or a forecast's)")
    try:
        if config is not None:
            from budget.service.settings import load_config

            return load_config(config).catalog()
        if scenario is not None:
            from sim.io.scenarios import load_scenario

            return load_scenario(scenario)[1]
        return default_catalog()
    except (BudgetError, SimError) as error:
        fail(str(error))


def price_report(catalog: PriceCatalog, names: list[str]) -> dict[str, Any]:
    """The JSON form: the catalog's provenance, and per model its tiers now and its dated changes."""
    rows = []
    for name in names:
        listed = catalog.resolve(name)
        assert listed is not None  # unknown names were refused before
        changes = catalog.history.get(listed, ())
        rows.append(
            {
                "model": name,
                "catalog_id": listed,
                "overridden": listed in catalog.overridden,
                "tiers": _tiers(catalog[name]),
                "history": [
                    {
                        "since": None if change.since.year == 1 else change.since.isoformat(),
                        "tiers": _tiers(change.price),
                    }
                    for change in changes
                ],
            }
        )
    return {"unit": "USD per 1M tokens", **catalog.provenance(), "models": rows}


def _tiers(price: ModelPrice) -> list[dict[str, Any]]:
    tiers: list[tuple[int, Rates]] = [(0, price.base), *((tier.above, tier.rates) for tier in price.tiers)]
    return [
        {"above": above, **{name: usd(getattr(rates, name)) for name in FIELDS}} for above, rates in tiers
    ]


def usd(nanos: int) -> str:
    """Nano-dollars per token as USD per 1M tokens, exactly, with at least two decimals (75 -> "0.075")."""
    value = Decimal(nanos) / 1000
    text = f"{value:.3f}"
    return text[:-1] if text.endswith("0") else text


def price_table(report: dict[str, Any]) -> str:
    """The table form: one line per tier of each model, notes for overrides and price changes."""
    published = f" (data published {report['as_of']})" if report["as_of"] else ""
    lines = [
        f"Prices in {report['unit']} from {report['catalog']}{published}, in force on {report['priced_on']}."
    ]
    rows: list[tuple[str, ...]] = [HEADER]
    for model in report["models"]:
        tiers = model["tiers"]
        for index, tier in enumerate(tiers):
            first = index == 0
            rows.append(
                (
                    model["model"] if first else "",
                    model["catalog_id"] if first and model["catalog_id"] != model["model"] else "",
                    _prompt_range(tiers, index),
                    *(tier[name] for name in FIELDS),
                    _note(model, report["priced_on"]) if first else "",
                )
            )
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADER))]
    numeric = {3, 4, 5, 6}
    for row in rows:
        cells = [
            cell.rjust(width) if column in numeric else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _prompt_range(tiers: list[dict[str, Any]], index: int) -> str:
    if len(tiers) == 1:
        return "any"
    if index + 1 < len(tiers):
        upper = f"<= {tiers[index + 1]['above']:,}"
        return upper if index == 0 else f"> {tiers[index]['above']:,}, {upper}"
    return f"> {tiers[index]['above']:,}"


def _note(model: dict[str, Any], priced_on: str) -> str:
    if model["overridden"]:
        return "override"
    dated = [change["since"] for change in model["history"] if change["since"] is not None]
    return ", ".join(f"{'changed' if day <= priced_on else 'changes'} {day}" for day in dated)
