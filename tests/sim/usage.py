"""Usage as the enforcer stores it, made from a simulator run: what `margins fit` and
`margins forecast-error` read in their tests, and `margins fit` invoked in-process."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from budget.domain.events import UsageRecorded, encode_usage
from sim.cli import main
from sim.model.codes import Outcome, Served
from sim.model.run import RunResult

DATA = Path(__file__).resolve().parents[1] / "data"  # the sample traces (tests/data/README.md)
MONTH_START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def usage_events(run: RunResult) -> list[UsageRecorded]:
    """The run's usage as the enforcer would have stored it, each with its prompt's hash."""
    traffic, log = run.traffic, run.attempts
    call = log.column("call").astype(np.int64)

    def prompt_hash(request: int) -> str:
        key = int(traffic.exact_key[request])
        return f"p{key}" if key >= 0 else f"once{request}"

    events = [
        UsageRecorded(
            event_id=f"a{i}",
            user_id=f"u{traffic.user[traffic.call_request[c]]}",
            ts=MONTH_START + dt.timedelta(seconds=float(t)),
            model=run.models[int(m)],
            input_tokens=int(i_tokens),
            output_tokens=int(o_tokens),
            cost_nanos=int(cost),
            outcome=Outcome(int(o)).usage_outcome,
            prompt_hash=prompt_hash(int(traffic.call_request[c])),
        )
        for i, (c, t, m, o, i_tokens, o_tokens, cost) in enumerate(
            zip(
                call,
                log.column("t"),
                log.column("model"),
                log.column("outcome"),
                log.column("billed_input"),
                log.column("billed_output"),
                log.column("cost_nanos"),
                strict=True,
            )
        )
    ]
    for r in np.flatnonzero((run.served == Served.EXACT) | (run.served == Served.SEMANTIC)).tolist():
        events.append(
            UsageRecorded(
                event_id=f"c{r}",
                user_id=f"u{traffic.user[r]}",
                ts=MONTH_START + dt.timedelta(seconds=float(traffic.t[r])),
                model=run.models[0],
                input_tokens=0,
                output_tokens=0,
                cost_nanos=0,
                outcome="cache_hit",
                cache_layer="exact",
                prompt_hash=prompt_hash(r),
            )
        )
    return events


def write_jsonl(path: Path, events: list[UsageRecorded]) -> Path:
    path.write_bytes(b"\n".join(encode_usage(e) for e in events) + b"\n")
    return path


def fit_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["fit", *args])
    return result.exit_code, result.stdout, result.stderr
