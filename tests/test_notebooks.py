"""Every notebook runs, small, and is committed without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMALL = {
    "MARGINS_NB_MAU": "150",
    "MARGINS_NB_MAUS": "100,200",
    "MARGINS_NB_DAYS": "3",
    "MARGINS_NB_WORKERS": "1",
}


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_a_small_configuration(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**SMALL, "MARGINS_NB_OUT": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MARGINS_STORE", raising=False)
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=dict(os.environ))  # raises CellExecutionError, with the cell and traceback
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)  # every cell ran, none was skipped
    shown = {o.output_type for c in code for o in c.outputs}
    assert shown & {"display_data", "execute_result", "stream"}, f"{path.name} showed nothing"
