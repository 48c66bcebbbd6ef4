"""`margins spend` beside each user's spend: the cap an admin last set (from the store's UserConfigured
events), else with --config the plan's or the default cap, else "-"; and the % of it spent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from budget.cli.spend import spend
from budget.domain.events import Event, UsageRecorded, UserConfigured
from budget.store.event_store import EventStore
from budget.store.queries import SpendReader, UserSettings

TS = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
CAPS = """\
default_cap_usd = "1.00"

[plans.pro]
cap_usd = "50"
"""


def spent(user: str, event_id: str, cost_nanos: int) -> UsageRecorded:
    return UsageRecorded(
        event_id=event_id,
        user_id=user,
        ts=TS,
        model="gpt-4o-mini",
        input_tokens=10,
        output_tokens=10,
        cost_nanos=cost_nanos,
        month="2026-11",
    )


EVENTS: list[Event] = [
    spent("own", "e1", 500_000_000),
    spent("pro", "e2", 5_000_000_000),
    spent("plain", "e3", 250_000_000),
    # "own": a cap of $2, then a plan change that leaves the cap as it was; "pro": the pro plan, no cap
    UserConfigured(user_id="own", ts=TS, cap_nanos=2_000_000_000),
    UserConfigured(user_id="own", ts=TS, plan="pro", timezone="Asia/Tokyo"),
    UserConfigured(user_id="pro", ts=TS, plan="pro"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("caps") / "store"
    with EventStore.open(root, flush_interval=None) as writer:
        writer.append(EVENTS)
        writer.flush()
    return root


def by_user(store: Path, *extra: str) -> dict[str, dict[str, object]]:
    result = CliRunner().invoke(
        spend, ["--store", str(store), "--month", "2026-11", "--format", "json", *extra]
    )
    assert result.exit_code == 0, result.output
    return {r["user_id"]: r for r in json.loads(result.stdout)}


def test_the_latest_setting_of_each_kind_wins(store: Path) -> None:
    with SpendReader(store) as reader:
        settings = reader.user_settings(["own", "pro", "plain"])
    assert settings == {
        "own": UserSettings(cap_nanos=2_000_000_000, plan="pro", timezone="Asia/Tokyo"),
        "pro": UserSettings(cap_nanos=None, plan="pro", timezone=None),
    }


def test_caps_from_the_store_alone(store: Path) -> None:
    rows = by_user(store)
    assert (rows["own"]["cap_usd"], rows["own"]["pct_of_cap"]) == ("2", "25.0")
    assert (rows["pro"]["cap_usd"], rows["pro"]["pct_of_cap"]) == (
        None,
        None,
    )  # the plan's cap is in the config
    assert (rows["plain"]["cap_usd"], rows["plain"]["pct_of_cap"]) == (None, None)


def test_caps_with_the_config(store: Path, tmp_path: Path) -> None:
    (tmp_path / "caps.toml").write_text(CAPS)
    rows = by_user(store, "--config", str(tmp_path / "caps.toml"))
    assert (rows["own"]["cap_usd"], rows["own"]["pct_of_cap"]) == (
        "2",
        "25.0",
    )  # their own cap beats the plan
    assert (rows["pro"]["cap_usd"], rows["pro"]["pct_of_cap"]) == ("50", "10.0")
    assert (rows["plain"]["cap_usd"], rows["plain"]["pct_of_cap"]) == ("1", "25.0")


def test_the_table_shows_a_dash_where_the_cap_is_unknown(store: Path) -> None:
    result = CliRunner().invoke(spend, ["--store", str(store), "--month", "2026-11"])
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert lines["plain"][-2:] == ["-", "-"]
    assert lines["own"][-2:] == ["2", "25.0"]


def test_a_bad_config_is_one_line_and_exit_2(store: Path, tmp_path: Path) -> None:
    (tmp_path / "caps.toml").write_text('default_cap_usd = "lots"\n')
    result = CliRunner().invoke(spend, ["--store", str(store), "--config", str(tmp_path / "caps.toml")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "default_cap_usd" in result.stderr
