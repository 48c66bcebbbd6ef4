"""The record of alerts already delivered: durable across a reopen, bounded, and strict about its file."""

from __future__ import annotations

from pathlib import Path

import pytest

from budget.alerts.delivered import HEADER, DeliveredRecord
from budget.errors import AlertStateError


def test_a_key_added_is_there_after_a_reopen(tmp_path: Path) -> None:
    record = DeliveredRecord.open(tmp_path / "state")
    assert "cap:u1:2026-12" not in record
    record.add("cap:u1:2026-12")
    reopened = DeliveredRecord.open(tmp_path / "state")
    assert "cap:u1:2026-12" in reopened
    assert "soft:u1:2026-12" not in reopened
    assert not (tmp_path / "state" / "delivered.tmp").exists()


def test_it_keeps_only_the_newest_keys_so_its_file_stays_small(tmp_path: Path) -> None:
    record = DeliveredRecord.open(tmp_path, limit=3)
    for i in range(5):
        record.add(f"overshoot:u:e{i}")
    assert [f"overshoot:u:e{i}" in record for i in range(5)] == [False, False, True, True, True]
    lines = (tmp_path / "delivered").read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == 4
    assert len(DeliveredRecord.open(tmp_path, limit=2)) == 2


def test_a_key_added_again_becomes_the_newest(tmp_path: Path) -> None:
    record = DeliveredRecord.open(tmp_path, limit=2)
    record.add("a")
    record.add("b")
    record.add("a")
    record.add("c")
    assert "a" in record and "b" not in record


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("something else\n", "not a record of delivered alerts"),
        (f"{HEADER}\nxyz\n", "line 2: 'xyz' is not a key digest"),
    ],
)
def test_a_file_that_is_not_a_record_is_refused_naming_it(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "delivered").write_text(text)
    with pytest.raises(AlertStateError, match=problem) as error:
        DeliveredRecord.open(tmp_path)
    assert str(tmp_path / "delivered") in str(error.value)


def test_a_state_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(AlertStateError, match="cannot be read or written"):
        DeliveredRecord.open(tmp_path / "file")
