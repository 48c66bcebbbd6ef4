"""`margins eval router`: measure the rule-based router on a labelled set and record the shares it routes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sim.cli.common import cache_dir_option, fail, write_or_fail
from sim.io.progress import progress_bar, wanted

if TYPE_CHECKING:
    from sim.calibration.router_eval import Evaluation
    from sim.calibration.router_eval_io import RunRecord

MISSES_SHOWN = 15


@click.group(name="eval")
def eval_group() -> None:
    """Measure a cost lever's model against labelled data."""


@eval_group.command()
@click.option(
    "--set", "set_path", required=True, type=click.Path(dir_okay=False), help="Eval set (JSON lines)"
)
@click.option(
    "--rules", "rules_path", type=click.Path(dir_okay=False), help="Rules (TOML): the built-in classifier"
)
@click.option(
    "--examples",
    "examples_path",
    type=click.Path(dir_okay=False),
    help="Labelled examples (JSON lines, like the set): classify by the k nearest of them with the local "
    "all-MiniLM-L6-v2 (the semantic extra) instead of rules",
)
@click.option(
    "--k", type=click.IntRange(1), default=5, show_default=True, help="Neighbours that vote (--examples)"
)
@cache_dir_option
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), help="DuckDB file: append this run")
@click.option(
    "--write-shares",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the measured [router] shares as a scenario fragment (TOML)",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def router(
    set_path: str,
    rules_path: str | None,
    examples_path: str | None,
    k: int,
    cache_dir: Path | None,
    db: Path | None,
    write_shares: Path | None,
    fmt: str,
) -> None:
    """Route every request of the eval set with the rules (or the nearest labelled examples); print
    accuracy, the confusion matrix and the shares a scenario's [router] takes (hard_to_expensive,
    easy_to_expensive)."""
    from sim.calibration.router_eval_io import RunRecord, record_run, shares_toml
    from sim.io.user_files import file_sha256

    if (rules_path is None) == (examples_path is None):
        fail("eval router: give --rules FILE or --examples FILE (one of them)")
    evaluation, classifier = _evaluate(set_path, rules_path, examples_path, k, cache_dir, wanted(fmt))
    record = RunRecord(
        run_at=dt.datetime.now(dt.UTC),
        set_path=set_path,
        set_sha256=file_sha256(set_path),
        rules_path=classifier,
        rules_sha256=file_sha256(rules_path or str(examples_path)),
        confusion=evaluation.confusion,
    )
    previous = record_run(db, record) if db is not None else None
    if write_shares is not None:
        write_or_fail(write_shares, lambda: write_shares.write_text(shares_toml(record), encoding="utf-8"))
    if fmt == "json":
        click.echo(json.dumps(report(record, evaluation, previous, recorded=db is not None), indent=2))
    else:
        click.echo(table(record, evaluation, previous))


def _evaluate(
    set_path: str,
    rules_path: str | None,
    examples_path: str | None,
    k: int,
    cache_dir: Path | None,
    show_progress: bool,
) -> tuple[Evaluation, str]:
    """The eval set classified by the rules, or by the k nearest labelled examples; and what classified it
    (the rules file, or "knn k=K on FILE"), as the history records it. Embeddings are read from and
    kept in the cache under `cache_dir` (None: the default place)."""
    from sim.calibration.router_eval import evaluate, tally
    from sim.calibration.router_eval_io import load_rules, read_eval_set
    from sim.errors import SimError

    try:
        examples = read_eval_set(set_path)
        if rules_path is not None:
            return evaluate(examples, load_rules(rules_path)), rules_path
        from sim.calibration.embedding import embed
        from sim.calibration.embedding_cache import default_cache_dir
        from sim.calibration.router_knn import knn_verdicts

        assert examples_path is not None
        training = read_eval_set(examples_path)
        if k > len(training):
            fail(f"{examples_path}: (file): --k {k} needs at least {k} examples, found {len(training)}")
        texts = [e.text for e in training] + [e.text for e in examples]
        with progress_bar("embedding", "text", show_progress) as bar:
            vectors = embed(texts, cache_dir or default_cache_dir(), bar).vectors
        verdicts = knn_verdicts(
            vectors[: len(training)], [e.label for e in training], vectors[len(training) :], k
        )
    except SimError as error:
        fail(str(error))
    return tally(examples, verdicts), f"knn k={k} on {examples_path}"


def change(record: RunRecord, previous: RunRecord) -> dict[str, Any]:
    """Each figure's move since the previous run of the same set, and whether the rules differ."""
    now, before = record.figures(), previous.figures()
    return {
        "previous_run_at": previous.run_at.isoformat(),
        "rules_changed": previous.rules_sha256 != record.rules_sha256,
        **{name: now[name] - before[name] for name in now},
    }


def report(
    record: RunRecord, evaluation: Evaluation, previous: RunRecord | None, *, recorded: bool
) -> dict[str, Any]:
    """The run as JSON: figures, matrix, per-rule counts, every miss, and the change when recorded."""
    c = record.confusion
    return {
        "set": {"path": record.set_path, "sha256": record.set_sha256, "hard": c.hard, "easy": c.easy},
        "rules": {"path": record.rules_path, "sha256": record.rules_sha256},
        "run_at": record.run_at.isoformat(),
        **record.figures(),
        "confusion": {
            "easy": {"cheap": c.easy_cheap, "expensive": c.easy_expensive},
            "hard": {"cheap": c.hard_cheap, "expensive": c.hard_expensive},
        },
        "rule_counts": [
            {"rule": r.name, "on_hard": r.on_hard, "on_easy": r.on_easy} for r in evaluation.rule_counts
        ],
        "misses": [
            {"line": e.line, "text": e.text, "label": e.label, "reasons": list(v.reasons)}
            for e, v in evaluation.misses()
        ],
        "change": change(record, previous) if previous is not None else None,
        "recorded": recorded,
    }


def table(record: RunRecord, evaluation: Evaluation, previous: RunRecord | None) -> str:
    """The run as the terminal shows it."""
    c = record.confusion
    lines = [
        f"router eval: {record.set_path} ({c.total} requests: {c.hard} hard, {c.easy} easy)",
        f"classifier: {record.rules_path}",
        "",
        f"{'':<12}{'routed cheap':>14}{'routed expensive':>18}",
        f"{'true easy':<12}{c.easy_cheap:>14}{c.easy_expensive:>18}",
        f"{'true hard':<12}{c.hard_cheap:>14}{c.hard_expensive:>18}",
        "",
        f"accuracy            {c.accuracy:.3f}",
        f"hard_to_expensive   {c.hard_to_expensive:.3f}   (recall on hard)",
        f"easy_to_expensive   {c.easy_to_expensive:.3f}   (easy sent to the expensive model)",
    ]
    if evaluation.rule_counts:
        lines += ["", f"{'rule':<24}{'on hard':>8}{'on easy':>9}"]
        lines += [f"{r.name:<24}{r.on_hard:>8}{r.on_easy:>9}" for r in evaluation.rule_counts]
    misses = evaluation.misses()
    if misses:
        lines += ["", f"misses ({len(misses)}):"]
        for example, verdict in misses[:MISSES_SHOWN]:
            why = f" [{', '.join(verdict.reasons)}]" if verdict.reasons else ""
            lines.append(f"  line {example.line}: {example.label} -> {verdict.label}{why}: {example.text}")
        if len(misses) > MISSES_SHOWN:
            lines.append(f"  ... {len(misses) - MISSES_SHOWN} more (--format json lists them all)")
    if previous is not None:
        moved = change(record, previous)
        rules_note = "rules changed" if moved["rules_changed"] else "same rules"
        lines += [
            "",
            f"change since {moved['previous_run_at']} ({rules_note}): "
            + ", ".join(f"{name} {moved[name]:+.3f}" for name in record.figures()),
        ]
    return "\n".join(lines)
