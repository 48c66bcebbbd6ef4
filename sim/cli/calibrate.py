"""`margins calibrate semantic`: measure a semantic cache's hit and false-hit rates on labelled queries."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sim.cli.common import cache_dir_option, fail, write_or_fail
from sim.errors import SimError
from sim.io.progress import progress_bar, wanted

if TYPE_CHECKING:
    from sim.calibration.query_sets import QuerySet
    from sim.calibration.semantic import Lookups, ProfileRow, Split

TABLE_STEP = 5  # the table shows every fifth threshold (0.05 apart) and the recommended one
CLOSEST_SHOWN = 5


@dataclass(frozen=True, slots=True)
class WrongMatch:
    """A lookup whose most similar stored query answers another question."""

    similarity: float
    kind: str
    text: str
    group: str | None
    matched_text: str
    matched_group: str


@dataclass(frozen=True, slots=True)
class Calibration:
    """One calibration run: what went in, how it was split, and the profile that came out."""

    files: list[str]
    file_sha256: list[str]
    model: str
    queries: int
    groups: int
    seed: int
    stored: int
    lookups_seen: int
    lookups_unseen: int
    lookups_out_of_scope: int
    embed_seconds: float
    embeddings_from_cache: int
    max_false_hit: float
    rows: list[ProfileRow]
    recommended: ProfileRow | None
    closest_wrong: list[WrongMatch]


@click.group(name="calibrate")
def calibrate_group() -> None:
    """Measure a cost lever's model parameters from labelled data."""


@calibrate_group.command()
@click.option(
    "--pairs",
    "pair_files",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False),
    help="Labelled queries: .jsonl {text, group}, .csv (text + group/intent/category/label) or CLINC150 "
    ".json; repeat to join files",
)
@click.option(
    "--write-profile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the profile as a scenario fragment (TOML) that scenarios `extends`",
)
@click.option("--figure", type=click.Path(dir_okay=False, path_type=Path), help="Write the curves (PNG)")
@click.option(
    "--max-false-hit",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Recommend the lowest threshold whose false-hit rate is at most this (and no out-of-scope hit)",
)
@click.option(
    "--stored-share",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Share of each seen group's queries stored in the cache",
)
@click.option(
    "--unseen-share",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of groups held out of the cache (first-time questions)",
)
@click.option("--seed", type=int, default=0, show_default=True)
@cache_dir_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def semantic(
    pair_files: tuple[str, ...],
    write_profile: Path | None,
    figure: Path | None,
    max_false_hit: float,
    stored_share: float,
    unseen_share: float,
    seed: int,
    cache_dir: Path | None,
    fmt: str,
) -> None:
    """Embed labelled queries with the local all-MiniLM-L6-v2, play them through a semantic cache and
    print, per similarity threshold, the true-hit and false-hit rates a scenario's [cache.semantic]
    profile takes -- and the lowest threshold that keeps false hits under --max-false-hit.

    Embeddings are cached on disk (--cache-dir): a second run on the same queries does not run the model."""
    from sim.calibration.embedding import embed, model_version
    from sim.calibration.embedding_cache import default_cache_dir
    from sim.calibration.query_sets import read_query_sets
    from sim.calibration.semantic import nearest_stored, recommend, similarity_profile, split_queries
    from sim.io.user_files import file_sha256

    try:
        queries = read_query_sets(pair_files)
        started = time.perf_counter()
        with progress_bar("embedding", "query", wanted(fmt)) as bar:
            embedded = embed(queries.texts, cache_dir or default_cache_dir(), bar)
    except SimError as error:
        fail(str(error))
    embed_seconds = time.perf_counter() - started
    split = split_queries(queries.groups, stored_share=stored_share, unseen_share=unseen_share, seed=seed)
    with progress_bar("threshold sweep", "lookup", wanted(fmt), len(split.probes)) as bar:
        lookups = nearest_stored(embedded.vectors, queries.groups, split, bar)
        rows = similarity_profile(lookups)
    calibration = Calibration(
        files=list(pair_files),
        file_sha256=[file_sha256(p) for p in pair_files],
        model=model_version(),
        queries=len(queries.texts),
        groups=len(queries.group_names),
        seed=seed,
        stored=len(split.stored),
        **_lookup_counts(split),
        embed_seconds=embed_seconds,
        embeddings_from_cache=embedded.from_cache,
        max_false_hit=max_false_hit,
        rows=rows,
        recommended=recommend(rows, max_false_hit),
        closest_wrong=_closest_wrong(queries, split, lookups),
    )
    _write_outputs(calibration, write_profile, figure)
    click.echo(json.dumps(asdict(calibration), indent=2) if fmt == "json" else table(calibration))


def _lookup_counts(split: Split) -> dict[str, int]:
    from sim.calibration.semantic import ProbeKind

    kinds = split.probe_kind
    return {
        "lookups_seen": int((kinds == ProbeKind.SEEN).sum()),
        "lookups_unseen": int((kinds == ProbeKind.UNSEEN).sum()),
        "lookups_out_of_scope": int((kinds == ProbeKind.OUT_OF_SCOPE).sum()),
    }


def _closest_wrong(queries: QuerySet, split: Split, lookups: Lookups) -> list[WrongMatch]:
    from sim.calibration.semantic import OUT_OF_SCOPE, ProbeKind, closest_wrong

    kind_names = {
        ProbeKind.SEEN: "seen",
        ProbeKind.UNSEEN: "held-out group",
        ProbeKind.OUT_OF_SCOPE: "out of scope",
    }

    def name(group: int) -> str | None:
        return None if group == OUT_OF_SCOPE else queries.group_names[group]

    matches = []
    for position in closest_wrong(lookups, CLOSEST_SHOWN).tolist():
        query, match = int(split.probes[position]), int(lookups.match[position])
        matches.append(
            WrongMatch(
                similarity=round(float(lookups.similarity[position]), 4),
                kind=kind_names[ProbeKind(int(lookups.kind[position]))],
                text=queries.texts[query],
                group=name(int(queries.groups[query])),
                matched_text=queries.texts[match],
                matched_group=str(name(int(queries.groups[match]))),
            )
        )
    return matches


def _write_outputs(calibration: Calibration, profile_path: Path | None, figure_path: Path | None) -> None:
    if profile_path is not None:
        write_or_fail(
            profile_path, lambda: profile_path.write_text(profile_toml(calibration), encoding="utf-8")
        )
    if figure_path is not None:
        from sim.calibration.figures import semantic_profile_figure
        from sim.io.figures import save

        figure = semantic_profile_figure(calibration.rows, calibration.recommended, _title(calibration))
        write_or_fail(figure_path, lambda: save(figure, figure_path))


def _title(c: Calibration) -> str:
    names = ", ".join(Path(f).name for f in c.files)
    return f"semantic cache on {names}: {c.queries:,} queries, {c.groups} groups, {c.model}"


def profile_toml(c: Calibration) -> str:
    """A scenario fragment carrying the profile (and the recommended threshold): list it in `extends`."""
    files = ", ".join(f"{f} (sha256 {sha[:12]})" for f, sha in zip(c.files, c.file_sha256, strict=True))
    lines = [
        f"# Semantic-cache profile measured by `margins calibrate semantic` on {dt.date.today()}:",
        f"# {files}; {c.queries} queries in {c.groups} groups; embeddings {c.model}.",
        f"# Seed {c.seed}: {c.stored} stored; lookups {c.lookups_seen} seen, {c.lookups_unseen} of held-out "
        f"groups, {c.lookups_out_of_scope} out of scope.",
        "# Rows: [threshold, true_hit, false_hit]; see `margins calibrate semantic --help`.",
    ]
    if c.recommended is None:
        lines.append(f"# No threshold keeps false hits <= {c.max_false_hit} with no out-of-scope hit.")
    else:
        lines.append(f"# threshold: the lowest with false hits <= {c.max_false_hit} and no out-of-scope hit.")
    lines.append("[cache.semantic]")
    if c.recommended is not None:
        lines.append(f"threshold = {c.recommended.threshold:.2f}")
    lines.append("profile = [")
    lines += [f"    [{r.threshold:.2f}, {r.true_hit:.4f}, {r.false_hit:.4f}]," for r in c.rows]
    lines.append("]")
    return "\n".join(lines) + "\n"


def table(c: Calibration) -> str:
    """The run as the terminal shows it: the split, then the curve every 0.05 and the recommendation."""
    lines = [
        f"semantic calibration: {c.queries:,} queries in {c.groups} groups from {', '.join(c.files)}",
        f"embeddings: {c.model}, {c.embed_seconds:.1f} s ({c.embeddings_from_cache:,} of {c.queries:,} from "
        "the cache)",
        f"split (seed {c.seed}): {c.stored:,} stored; lookups: {c.lookups_seen:,} seen, "
        f"{c.lookups_unseen:,} of held-out groups, {c.lookups_out_of_scope:,} out of scope",
        "",
        f"{'threshold':>9}{'true hit':>10}{'false hit':>11}{'wrong, seen':>13}{'wrong, unseen':>15}"
        f"{'out-of-scope hits':>19}",
    ]
    shown = [r for i, r in enumerate(c.rows) if i % TABLE_STEP == 0 or r == c.recommended]
    for r in shown:
        mark = "  <- recommended" if r == c.recommended else ""
        lines.append(
            f"{r.threshold:>9.2f}{r.true_hit:>10.1%}{r.false_hit:>11.2%}{r.wrong_when_seen:>13.2%}"
            f"{r.wrong_when_unseen:>15.2%}{_oos(r):>19}{mark}"
        )
    lines += ["", _recommendation(c)]
    if c.closest_wrong:
        lines += ["", "closest wrong matches (a threshold at or below these serves them a wrong answer):"]
        lines += [
            f"  {m.similarity:.3f} {m.kind}: {m.text!r} ({m.group or 'no intent'}) -> "
            f"{m.matched_text!r} ({m.matched_group})"
            for m in c.closest_wrong
        ]
    return "\n".join(lines)


def _oos(row: ProfileRow) -> str:
    return f"{row.out_of_scope_hits}/{row.out_of_scope_lookups}" if row.out_of_scope_lookups else "-"


def _recommendation(c: Calibration) -> str:
    r = c.recommended
    if r is None:
        return f"no threshold keeps false hits <= {c.max_false_hit:.1%} with no out-of-scope hit"
    return (
        f"recommended threshold {r.threshold:.2f}: true hit {r.true_hit:.1%}, false hit {r.false_hit:.2%}, "
        f"{r.out_of_scope_hits} out-of-scope hits "
        f"(target: false hit <= {c.max_false_hit:.1%}, none out of scope)"
    )
