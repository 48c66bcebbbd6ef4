"""A live spend store to query without a live service: a forecast's usage, folded through the enforcer's
ledger and appended to an enforcer store (budget.store.EventStore), as the service would have done.

For the live-spend notebook and demos: `margins spend --store PATH` and budget.queries.SpendReader read
the result exactly as they read a production store. Each provider attempt that billed anything becomes
a RecordUsage command; the ledger prices it from the catalog, files it under the user's month and
announces the soft limit and the cap as they are crossed (users are not capped here: this is the
spend the forecast says would happen).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from budget.domain.config import EnforcerConfig, Plan, usd_to_nanos
from budget.domain.ledger import Ledger, RecordUsage
from budget.domain.prices import PriceCatalog
from budget.store.event_store import EventStore
from sim.model.caps import monthly_cap_nanos
from sim.model.codes import Outcome
from sim.model.run import RunResult

BATCH = 5_000


def fill_store(path: str | Path, run: RunResult, catalog: PriceCatalog, cap_usd: float = 5.0) -> int:
    """Append the run's billed attempts to the store at `path` as the enforcer would; returns the number
    of usage events written. The ledger announces limits against a `cap_usd` monthly cap (80% soft)."""
    cap = run.scenario.cap
    plan = Plan(
        name="default",
        cap_nanos=usd_to_nanos(cap_usd, "live demo", "cap_usd") if cap is None else monthly_cap_nanos(cap),
        at_cap="block",
        degrade_model=None,
        soft_threshold_pct=80,
    )
    ledger = Ledger(EnforcerConfig(default_plan=plan, source="live demo"), catalog)
    log = run.attempts
    billed = np.flatnonzero(log.column("cost_nanos") > 0)
    order = billed[np.argsort(log.column("t")[billed], kind="stable")]
    start = dt.datetime.fromisoformat(run.scenario.traffic.start).replace(tzinfo=dt.UTC)
    request = run.traffic.call_request[log.column("call").astype(np.int64)]
    users = run.traffic.user[request].tolist()
    models = log.column("model").astype(np.int64).tolist()
    outcomes = log.column("outcome").astype(np.int64).tolist()
    seconds = log.column("t").tolist()
    inputs = log.column("billed_input").astype(np.int64).tolist()
    outputs = log.column("billed_output").astype(np.int64).tolist()
    written = 0
    with EventStore.open(path, flush_interval=None) as store:
        batch = []
        for i in order.tolist():
            ts = start + dt.timedelta(seconds=seconds[i])
            command = RecordUsage(
                event_id=f"live-{run.scenario.name}-{i}",
                user_id=f"u{users[i]}",
                ts=ts,
                model=run.models[models[i]],
                input_tokens=inputs[i],
                output_tokens=outputs[i],
                feature="chat",
                outcome=Outcome(outcomes[i]).usage_outcome,
            )
            batch.extend(ledger.execute(command, ts))
            written += 1
            if len(batch) >= BATCH:
                store.append(batch)
                batch = []
        store.append(batch)
        store.flush()
    return written
