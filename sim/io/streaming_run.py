"""The streaming engine: a run simulated a day (or a few) at a time, in memory bounded by one part of days
plus carried state.

The traffic is drawn a block of users at a time and spilled by simulated day (sim/model/traffic_blocks.py,
sim/io/traffic_spill.py: the same numbers as `traffic.generate`, with the engine's router and cache draws
at each request); each day is read back and played by the day loop (sim/model/day_loop.py). Days are
played together, a part at a time, while a part holds at most REQUESTS_PER_PART requests (a run of at
most twice that is one part): what a part costs beyond its requests (cache stacks carried, sheets
rebuilt, the open requests folded) is paid once a part, so a small run is played in one part and a
10M-MAU one (13M requests a day) a day at a time. Two cores are kept busy (sim/io/ahead.py): the next
block of users is drawn while one is spilled, and the next part is read and opened (sim/model/
day_opening.py) while one plays. The figures are `forecast.summarize(engine.simulate(...))`'s to the
byte. Given a `usage` sink (`--out`: sim/io/usage_rows.py `UsageStream`), it hands out the run's usage
rows as they are made -- the same rows as the whole run's, in another order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory

from budget.domain.prices import PriceCatalog
from sim.io.ahead import ahead
from sim.io.traffic_spill import SpillSummary, hold, read_day, spill
from sim.io.user_block_spill import UserBlockSpill
from sim.io.value_spill import SpilledValues
from sim.model.cap_pass import CapPass
from sim.model.day_loop import DayLoop
from sim.model.day_opening import DayOpener, OpenedDay
from sim.model.randomness import streams_for
from sim.model.run_figures import Summary, ValueStore
from sim.model.scenario import Scenario
from sim.model.traffic_block_context import engine_blocks_with_totals
from sim.model.traffic_blocks import DayTraffic, TrafficBlock
from sim.model.usage_chunk import UsageChunk

USERS_PER_BLOCK = 100_000  # users drawn at a time: a block's arrays are a few hundred MB at most
# Requests a part holds: days are played together while their requests stay under this (a part of several
# days has fewer parts' overhead -- cache stacks carried, sheets rebuilt -- at a working set that grows
# with it; two parts are held, one playing and the next opened; a run of at most twice this is one part.
# Measured in the README's "Scaling out the simulator": 1M MAU, 2 days a part, 2.68 GB; 3 days, 3.10 GB).
REQUESTS_PER_PART = 3_000_000


def simulate_streaming(
    scenario: Scenario,
    catalog: PriceCatalog,
    mau: int,
    days: int,
    seed: int,
    replication: int = 0,
    spill_dir: str | Path | None = None,
    users_per_block: int = USERS_PER_BLOCK,
    ttft_store: ValueStore | None = None,
    on_phase: Callable[[str], object] | None = None,
    spill_root: str | Path | None = None,
    usage: Callable[[UsageChunk], object] | None = None,
    days_per_part: int | None = None,
) -> Summary:
    """The figures of one run of `scenario` at `mau` users for `days` days, simulated a day at a time.

    The traffic is spilled under `spill_dir` (an empty directory, kept), else in a temporary directory
    under `spill_root` (the system's when None), removed after. `ttft_store` keeps the TTFTs for their
    percentiles (when None: spilled beside the days, 8 bytes a request on disk, none in memory).
    `on_phase` hears what the run starts on next. `usage` hears the run's usage rows (sim/model/
    usage_chunk.py) a tick at a time -- with a cap, a block of users at a time after the last day: never
    the month's at once. `days_per_part`: how many days are played at once (None: as many as keep a part
    under REQUESTS_PER_PART requests, at least one: `parts_of`); the figures are the same whatever it is.
    """
    run = _Run(
        scenario, catalog, mau, days, seed, replication, users_per_block, ttft_store, on_phase, usage,
        days_per_part,
    )  # fmt: skip
    if spill_dir is not None:  # the traffic asked for on disk is always spilled there
        return run.into(Path(spill_dir), may_hold=False)
    with TemporaryDirectory(prefix="margins-days-", dir=spill_root) as temporary:
        return run.into(Path(temporary), may_hold=True)


@dataclass(frozen=True, slots=True)
class _Run:
    scenario: Scenario
    catalog: PriceCatalog
    mau: int
    days: int
    seed: int
    replication: int
    users_per_block: int
    ttft_store: ValueStore | None
    on_phase: Callable[[str], object] | None
    usage: Callable[[UsageChunk], object] | None
    days_per_part: int | None

    def into(self, directory: Path, may_hold: bool) -> Summary:
        """Bucket the run's traffic by part (spilled under `directory`, or held when `may_hold` and the
        run is small), then play the parts in order."""
        phase = self.on_phase or _ignore
        scenario, days = self.scenario, self.days
        streams = streams_for(self.seed, self.mau, self.replication)
        phase("traffic")
        totals, blocks = engine_blocks_with_totals(scenario, self.mau, days, streams, self.users_per_block)
        per_part = self.days_per_part or parts_of(totals.requests, days, REQUESTS_PER_PART)
        spilled, read = self._bucketed(blocks, directory, per_part, may_hold)
        ttft_store = self.ttft_store if self.ttft_store is not None else SpilledValues(directory / "ttft")
        cap_pass = None
        if scenario.cap is not None:  # finished requests wait by block of users for the cap
            capped = UserBlockSpill(directory / "capped", self.users_per_block)
            cap_pass = CapPass(scenario, self.catalog, self.mau, days, capped, self.usage)
        day_loop = DayLoop(
            scenario,
            self.catalog,
            self.mau,
            days,
            streams.attempt_key,
            ttft_store,
            totals.sessions,
            cap_pass,
            self.usage,
        )
        parts = [
            (first, min(per_part, spilled.last_day + 1 - first))
            for first in range(0, spilled.last_day + 1, per_part)
        ]
        open_part = partial(_open_part, day_loop.opener, read, set(spilled.days))
        # The next part is read and opened while this one plays: opening reads only what opening the
        # part before left (sim/model/day_opening.py).
        openings = ahead(open_part(first) for first, _ in parts)
        for (first, ticks), opened in zip(parts, openings, strict=True):
            phase(_part_name(first, ticks, days))
            day_loop.play_opened(opened, ticks)
        while day_loop.busy:  # retries and queued calls past the last day, as the whole run plays them
            phase("attempts after the last day")
            day_loop.play(None)
        if cap_pass is not None:
            phase("cap")
            day_loop.finish_cap()
        return day_loop.figures.summary()

    def _bucketed(
        self, blocks: Iterable[TrafficBlock], directory: Path, per_part: int, may_hold: bool
    ) -> tuple[SpillSummary, Callable[[int], DayTraffic]]:
        """The run's traffic bucketed by part, and how a part is read back (by its first day): kept in
        memory when it may be and the run is one block of users played in one part (it would be read back
        at once), else spilled under `directory`."""
        if may_hold and per_part > self.days and self.mau <= self.users_per_block:
            summary, held = hold(blocks, per_part)
            return summary, held.pop
        # the next block is drawn while this one is bucketed and written
        return spill(ahead(blocks), directory, days_per_part=per_part), partial(read_day, directory)


def _open_part(
    opener: DayOpener, read: Callable[[int], DayTraffic], with_requests: set[int], first: int
) -> OpenedDay | None:
    """The part starting on day `first`, read and opened (None: it brings no requests)."""
    if first not in with_requests:
        return None
    day = read(first)
    if not day.requests["request"].size:
        return None
    return opener.open(day, last=first == max(with_requests))


def parts_of(requests: int, days: int, most: int) -> int:
    """Days per part: the whole run and the night after it when it holds at most twice `most` requests
    (one part: nothing to open ahead, so one held), else as many days as keep a part's requests (the run's
    spread evenly) at or under `most`, at least one -- two parts are held then, one playing and the next
    opened."""
    if requests <= 2 * most:
        return days + 1
    per_day = -(-requests // max(days, 1))
    return max(1, min(days, most // per_day))


def _part_name(first: int, ticks: int, days: int) -> str:
    """How progress names a part: "day 3 of 30", "days 1-7 of 30", "requests after the last day"."""
    if first >= days:
        return "requests after the last day"
    last = min(first + ticks, days)
    return f"day {first + 1} of {days}" if last == first + 1 else f"days {first + 1}-{last} of {days}"


def _ignore(_phase: str) -> None:
    pass
