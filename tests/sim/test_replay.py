"""`margins replay`: a trace's own tokens and cost with every lever off, the exact repeats it implies with the
exact cache on, and one clear line for a bad file."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import msgspec
import numpy as np
import pytest
from click.testing import CliRunner

from budget.domain.catalog import default_catalog
from budget.domain.events import UsageRecorded, encode_usage
from budget.domain.prices import PriceCatalog
from sim.calibration.replay import passthrough_scenario, policies_scenario, replay
from sim.cli import main
from sim.io.forecast_db import usage_frame
from sim.io.traces import read_trace
from sim.model.codes import Action, Served
from sim.model.policies.prompt_cache import prompt_cache_tokens
from sim.model.scenario import Scenario
from tests.sim.scenarios import scenario_from
from tests.sim.usage import DATA

AZURE = [DATA / "azure_conv_sample.csv", DATA / "azure_code_sample.csv"]
MOONCAKE = [DATA / "mooncake_conversation_sample.jsonl", DATA / "mooncake_synthetic_sample.jsonl"]


def plain_totals(path: Path) -> tuple[int, int]:
    """Input and output tokens summed straight from the file, without the readers under test."""
    if path.suffix == ".csv":
        with path.open() as handle:
            rows = list(csv.DictReader(handle))
        return sum(int(r["ContextTokens"]) for r in rows), sum(int(r["GeneratedTokens"]) for r in rows)
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if "input_length" in lines[0]:
        return sum(r["input_length"] for r in lines), sum(r["output_length"] for r in lines)
    return sum(r["input_tokens"] for r in lines), sum(r["output_tokens"] for r in lines)


def usage_file(tmp_path: Path) -> Path:
    """Three users' usage events over two days, as the enforcer would have received them."""
    start = datetime(2026, 11, 3, 9, tzinfo=UTC)
    events = [
        UsageRecorded(
            event_id=f"e{i}",
            user_id=f"user-{i % 3}",
            ts=start + timedelta(minutes=7 * i),
            model="gpt-4o",
            input_tokens=300 + 11 * i,
            output_tokens=50 + 3 * i,
            cost_nanos=0,
        )
        for i in range(60)
    ]
    path = tmp_path / "usage.jsonl"
    path.write_bytes(b"\n".join(encode_usage(e) for e in events) + b"\n")
    return path


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o"])
def test_pass_through_reproduces_tokens_and_cost_to_the_nano_dollar(model: str, tmp_path: Path) -> None:
    price = default_catalog()[model]
    for path in [*AZURE, *MOONCAKE, usage_file(tmp_path)]:
        rows = read_trace(path)
        run, result = replay(rows, *passthrough_scenario(model))
        inputs, outputs = plain_totals(path)
        billed_in = int(run.attempts.column("billed_input").sum())
        billed_out = int(run.attempts.column("billed_output").sum())
        assert (billed_in, billed_out) == (inputs, outputs), path.name
        assert int(run.cost_nanos.sum()) == inputs * price.input + outputs * price.output, path.name
        assert result.results[0]["requests"] == rows.requests
        assert result.results[0]["failed_requests"] == 0 and result.results[0]["rate_limited"] == 0
        tokens = result.results[0]["tokens"]
        assert (tokens["input"], tokens["output"]) == (inputs, outputs), path.name
        assert result.results[0]["tokens_by_model"][model]["input"] == inputs


def test_usage_events_keep_their_users_and_sessions(tmp_path: Path) -> None:
    rows = read_trace(usage_file(tmp_path))
    assert rows.format == "usage-jsonl" and len(rows.users) == 3
    _, result = replay(rows, *passthrough_scenario())
    level = result.results[0]
    assert level["mau"] == 3
    assert level["sessions"] == 3  # each user writes every 21 minutes: one session each


@pytest.mark.parametrize("path", MOONCAKE, ids=lambda p: p.name)
def test_the_exact_cache_hits_each_exact_repeat_in_the_trace(path: Path) -> None:
    hash_lists = [tuple(json.loads(line)["hash_ids"]) for line in path.read_text().splitlines()]
    repeats = len(hash_lists) - len(set(hash_lists))
    assert repeats > 0
    scenario, catalog = scenario_from(
        {"router": {"model": "gpt-4o-mini"}, "cache": {"exact": {"enabled": True}}}
    )
    run, result = replay(read_trace(path), scenario, catalog)
    assert int((run.served == Served.EXACT).sum()) == repeats
    assert result.results[0]["hit_rate"]["exact"] == pytest.approx(repeats / len(hash_lists))


def test_a_policies_file_changes_only_what_it_states(tmp_path: Path) -> None:
    rows = read_trace(MOONCAKE[1])
    plain_run, _ = replay(rows, *passthrough_scenario())
    policies = tmp_path / "exact.toml"
    policies.write_text("[cache.exact]\nenabled = true\n")
    code, out, err = run_cli("replay", str(MOONCAKE[1]), "--policies", str(policies), "--format", "json")
    assert code == 0, err
    level = json.loads(out)["results"][0]
    assert (level["failed_requests"], level["rate_limited"], level["retries"]) == (0, 0, 0)
    assert level["regenerations"] == 0 and level["hit_rate"]["exact"] > 0
    cached_run, _ = replay(rows, *policies_scenario({"cache": {"exact": {"enabled": True}}}, "exact.toml"))
    served_from_cache = cached_run.served == Served.EXACT
    # Each request the cache answered costs nothing; every other request bills what it billed before.
    assert int(cached_run.cost_nanos.sum()) == int(plain_run.cost_nanos[~served_from_cache].sum())
    assert int(cached_run.cost_nanos[served_from_cache].sum()) == 0


def test_a_policies_file_keeps_the_provider_fields_it_writes() -> None:
    stated = {"router": {"model": "gpt-4o"}, "providers": {"gpt-4o": {"error_rate": 0.2}}}
    scenario, _ = policies_scenario(stated, "errors.toml")
    provider = scenario.provider("gpt-4o")
    assert provider.error_rate == 0.2
    assert (provider.timeout_rate, provider.bad_completion_rate) == (0.0, 0.0)
    assert scenario.name == "errors"


def test_replay_out_stores_the_traces_own_tokens(tmp_path: Path) -> None:
    out = tmp_path / "replay.duckdb"
    code, out_text, err = run_cli("replay", str(AZURE[0]), "--out", str(out), "--format", "json")
    assert code == 0, err
    inputs, outputs = plain_totals(AZURE[0])
    with duckdb.connect(str(out), read_only=True) as db:
        stored = db.execute(
            "SELECT model, input_tokens, output_tokens, run_id FROM forecast_tokens"
        ).fetchall()
        usage = db.execute(
            "SELECT run_id, sum(input_tokens), sum(output_tokens) FROM usage GROUP BY ALL"
        ).fetchall()
    assert [row[:3] for row in stored] == [("gpt-4o-mini", inputs, outputs)]
    assert usage == [(stored[0][3], inputs, outputs)]  # events and figures share the run id
    assert json.loads(out_text)["results"][0]["tokens"]["input"] == inputs


def test_format_is_told_from_the_file() -> None:
    assert read_trace(AZURE[0]).format == "azure"
    assert read_trace(MOONCAKE[0]).format == "mooncake"


AZURE_2023 = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:15:46.6805900,374,44\n"
    "2023-11-16 18:15:50.9951690,396,109\n"
    "2023-11-16 18:16:01,879,28\n"
)
AZURE_2024 = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2024-05-10 00:00:00.006000+00:00,1631,55\n"
    "2024-05-10 00:00:04.311000+00:00,2270,303\n"
    "2024-05-10 02:00:15+02:00,412,12\n"
)


@pytest.mark.parametrize(
    ("text", "expected_t"),
    [(AZURE_2023, [0.0, 4.314579, 14.31941]), (AZURE_2024, [0.0, 4.305, 14.994])],
    ids=["2023", "2024"],
)
def test_both_azure_timestamp_releases_read(tmp_path: Path, text: str, expected_t: list[float]) -> None:
    path = tmp_path / "azure.csv"
    path.write_text(text)
    rows = read_trace(path)
    assert rows.format == "azure"
    assert rows.t.tolist() == pytest.approx(expected_t, abs=1e-6)
    assert rows.input_tokens.tolist() == [int(line.split(",")[1]) for line in text.splitlines()[1:]]


def test_an_azure_timestamp_in_neither_release_format_names_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00+00:00,1,1\nMay 10,1,1\n")
    code, _, err = run_cli("replay", str(path))
    assert code == 2 and err.count("\n") == 1
    assert f"{path}: line 3: TIMESTAMP" in err and "'May 10'" in err


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_replays_a_trace_as_json() -> None:
    code, out, err = run_cli("replay", str(MOONCAKE[1]), "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["trace"]["format"] == "mooncake"
    assert report["results"][0]["requests"] == 400


@pytest.mark.parametrize(
    ("name", "text", "args", "expected"),
    [
        (
            "missing.csv",
            "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,374\n",
            (),
            "line 1: GeneratedTokens",
        ),
        (
            "bad.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n"
            "2023-11-16 18:15:47,x,1\n",
            (),
            "line 3: ContextTokens",
        ),
        (
            "bad.jsonl",
            '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n'
            '{"timestamp": 1, "input_length": "many", "output_length": 1, "hash_ids": [1]}\n',
            (),
            "line 2: input_length",
        ),
        (
            "nohash.jsonl",
            '{"timestamp": 0, "input_length": 5, "output_length": 1}\n',
            ("--trace-format", "mooncake"),
            "line 1: hash_ids",
        ),
        ("usage.jsonl", '{"user_id": "u", "ts": "2026-11-01T00:00:00Z"}\n', (), "line 1: event_id"),
        ("what.txt", "hello\n", (), "line 1: (format)"),
    ],
)
def test_a_bad_trace_is_one_line_naming_file_line_and_field(
    tmp_path: Path, name: str, text: str, args: tuple[str, ...], expected: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    code, _, err = run_cli("replay", str(path), *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("margins: ")
    assert f"{path}: {expected}" in err


def test_unknown_format_and_model_are_one_line_errors() -> None:
    code, _, err = run_cli("replay", str(AZURE[0]), "--trace-format", "parquet")
    assert code == 2 and err.count("\n") == 1 and f"{AZURE[0]}: --trace-format: unknown format" in err
    code, _, err = run_cli("replay", str(AZURE[0]), "--model", "no-such-model")
    assert code == 2 and err.count("\n") == 1 and "no-such-model" in err


def mooncake_file(tmp_path: Path, rows: list[tuple[int, int, list[int]]]) -> Path:
    path = tmp_path / "prefixes.jsonl"
    lines = [
        json.dumps({"timestamp": ms, "input_length": tokens, "output_length": 10, "hash_ids": ids})
        for ms, tokens, ids in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("min_tokens", "expected"),
    [
        (0, [(0, 1536), (1024, 512), (0, 1024), (512, 0)]),
        (1024, [(0, 1536), (1024, 512), (0, 1024), (0, 0)]),
    ],
)
def test_the_provider_prompt_cache_reads_leading_blocks_seen_within_its_lifetime(
    tmp_path: Path, min_tokens: int, expected: list[tuple[int, int]]
) -> None:
    trace = [
        (0, 1636, [1, 2, 3, 4]),  # three full blocks written; the partial fourth is not cached
        (10_000, 1536, [1, 2, 5]),  # reads 1 and 2, writes 5
        (400_000, 1024, [1, 2]),  # 390 s later: the 300 s lifetime is over, written again
        (500_000, 700, [1, 9]),  # reads block 1 (refreshed at 400 s); 9 is partial
    ]
    model = "claude-haiku-4.5"  # bills cache writes above the input price
    provider = {"prompt_cache": True, "prompt_cache_ttl_s": 300.0, "prompt_cache_min_tokens": min_tokens}
    scenario, catalog = scenario_from({"router": {"model": model}, "providers": {model: provider}})
    run, _ = replay(read_trace(mooncake_file(tmp_path, trace)), *passthrough(scenario, catalog))
    order = np.argsort(run.attempts.column("call"))
    read = run.attempts.column("billed_cached")[order].astype(int).tolist()
    wrote = run.attempts.column("billed_write")[order].astype(int).tolist()
    assert list(zip(read, wrote, strict=True)) == expected
    price = catalog[model]
    plain = sum(
        price.cost_nanos(tokens, 10, cached, write)
        for (_, tokens, _), (cached, write) in zip(trace, expected, strict=True)
    )
    assert int(run.cost_nanos.sum()) == plain


def passthrough(scenario: Scenario, catalog: PriceCatalog) -> tuple[Scenario, PriceCatalog]:
    """The scenario with injected failures off, so the bill is the trace's alone."""
    quiet = {"error_rate": 0.0, "timeout_rate": 0.0, "bad_completion_rate": 0.0}
    providers = {m: msgspec.structs.replace(scenario.provider(m), **quiet) for m in scenario.models}
    return msgspec.structs.replace(scenario, providers=providers), catalog


def test_usage_rows_carry_the_prompt_cache_tokens() -> None:
    model = "gpt-4o-mini"
    scenario, catalog = scenario_from(
        {"router": {"model": model}, "providers": {model: {"prompt_cache": True}}}
    )
    run, _ = replay(read_trace(MOONCAKE[0]), *passthrough(scenario, catalog))
    frame = usage_frame(run, "r")
    assert int(frame["cached_input_tokens"].sum()) == int(run.attempts.column("billed_cached").sum()) > 0
    assert int(frame["cache_write_tokens"].sum()) == int(run.attempts.column("billed_write").sum()) > 0
    assert int(frame["cost_nanos"].sum()) == int(run.cost_nanos.sum())
    # Against the prompt cache itself: no failures are injected, so a call bills its cache tokens once,
    # on the attempt that answers it (rate-limited attempts bill nothing; calls never answered, nothing).
    quiet, _ = passthrough(scenario, catalog)
    cached, write = prompt_cache_tokens(quiet, run.traffic, run.request_model[run.traffic.call_request])
    answered = run.attempts.column("call")[run.attempts.column("action") == Action.DONE].astype(np.intp)
    assert int(frame["cached_input_tokens"].sum()) == int(cached[answered].sum())
    assert int(frame["cache_write_tokens"].sum()) == int(write[answered].sum())
