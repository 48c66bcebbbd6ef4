"""The SDK guards' test bench: a real mosquitto, the enforcer in-process, a BudgetClient, and the usage
reports as they cross the broker; `settled` waits until the enforcer has confirmed them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from budget.client import BudgetClient
from budget.domain.commands import UserStatus
from budget.integrations.thread import BudgetThread
from budget.service.enforcer import Enforcer
from tests.budget.broker import Broker
from tests.budget.enforcer_helpers import PATIENCE_S, make_enforcer
from tests.budget.mqtt_helpers import Collector, mqtt

# $1.00 a month; past it, the call is offered `degrade_model` if its worst case fits there, else denied.
CAPS = """\
default_cap_usd = "1.00"
soft_threshold_pct = 80
at_cap = "degrade"
degrade_model = "{degrade_model}"
reservation_ttl_s = 600
"""


@dataclass
class Bench:
    enforcer: Enforcer
    budget: BudgetClient
    broker: Broker
    usage: Collector

    def reports(self, user: str) -> list[dict[str, Any]]:
        return list(self.usage.on(f"margins/usage/{user}"))

    async def settled(
        self, user: str, reports: int, budget: BudgetThread | None = None
    ) -> list[dict[str, Any]]:
        """Once `reports` usage reports of `user` crossed the broker and the enforcer confirmed every report
        (of `budget` when given, else of the bench's client): those reports."""
        await self.usage.wait_for(lambda: len(self.reports(user)) >= reports, timeout=PATIENCE_S)
        if budget is None:
            left = await self.budget.flush(PATIENCE_S)
        else:
            left = await asyncio.wrap_future(budget.submit(budget.client.flush(PATIENCE_S)))
        assert left == 0, "the enforcer did not confirm every usage report"
        return self.reports(user)

    def status(self, user: str) -> UserStatus:
        return self.enforcer.ledger.status(user, datetime.now(UTC))

    def thread(self) -> BudgetThread:
        """Another client on the same broker, for synchronous SDK clients: enter it with `with`."""
        return BudgetThread(BudgetClient.connect(self.broker.url))


@asynccontextmanager
async def bench(broker: Broker, tmp_path: Path, degrade_model: str) -> AsyncIterator[Bench]:
    caps = CAPS.format(degrade_model=degrade_model)
    async with make_enforcer(broker, tmp_path, caps, fixed_clock=False) as enforcer:
        await enforcer.wait_subscribed()
        async with BudgetClient.connect(broker.url) as budget, mqtt(broker.port) as watcher:
            usage = await Collector(watcher).start("margins/usage/+")
            try:
                yield Bench(enforcer, budget, broker, usage)
            finally:
                usage.stop()


def nanos(
    price: dict[str, int], input_tokens: int, output_tokens: int, cached: int = 0, written: int = 0
) -> int:
    """A call's cost from per-token prices in nano-dollars, written out here, not taken from margins."""
    uncached = input_tokens - cached - written
    return (
        uncached * price["input"]
        + cached * price["cached_input"]
        + written * price["cache_write"]
        + output_tokens * price["output"]
    )


# Per-token list prices in nano-dollars (USD per 1M tokens x 1000), as genai-prices 0.2.3 lists them.
GPT_4O = {"input": 2500, "cached_input": 1250, "cache_write": 2500, "output": 10000}
GPT_4O_MINI = {"input": 150, "cached_input": 75, "cache_write": 150, "output": 600}
CLAUDE_SONNET = {"input": 3000, "cached_input": 300, "cache_write": 3750, "output": 15000}
CLAUDE_HAIKU = {"input": 1000, "cached_input": 100, "cache_write": 1250, "output": 5000}
