"""Every reader of a user's file says the same two things when it cannot read it, naming the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sim.calibration.fit import read_trace_observed
from sim.calibration.query_sets import read_query_sets
from sim.calibration.router_eval_io import load_rules, read_eval_set
from sim.errors import SimError
from sim.io.scenarios import load_scenario
from sim.io.traces import read_trace

READERS: list[tuple[str, Callable[[Path], Any]]] = [
    ("scenario.toml", load_scenario),
    ("trace.csv", read_trace),
    ("usage.jsonl", lambda path: read_trace_observed(path, "usage-jsonl")),
    ("fit-trace.csv", lambda path: read_trace_observed(path, None)),
    ("router.rules", load_rules),
    ("eval-set.jsonl", read_eval_set),
    ("queries.csv", lambda path: read_query_sets([path])),
]


@pytest.mark.parametrize(("name", "reader"), READERS, ids=[name for name, _ in READERS])
def test_missing_and_undecodable_files_are_one_clear_error(
    tmp_path: Path, name: str, reader: Callable[[Path], Any]
) -> None:
    path = tmp_path / name
    with pytest.raises(SimError) as missing:
        reader(path)
    assert str(missing.value).startswith(f"{path}: ") and "no such file" in str(missing.value)
    path.write_bytes(b"\xff\xfe\x00not utf-8 \xc3\x28")
    with pytest.raises(SimError) as garbled:
        reader(path)
    assert str(garbled.value).startswith(f"{path}: ") and "cannot be read" in str(garbled.value)
