"""A run's TTFTs spilled to a directory while its figures are folded (sim/model/run_figures.py), so that
the exact percentiles need no month of values in memory: each chunk's values are one .npy file, read back
memory-mapped, one file at a time, on each pass of the selection (sim/model/order_statistics.py).

Layout: DIR/values-NNNNNN.npy, in the order added.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np


class SpilledValues:
    """A ValueStore on disk: 8 bytes per value in files, none kept in memory."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.files: list[Path] = []

    def add(self, values: np.ndarray) -> None:
        if not values.size:
            return
        path = self.directory / f"values-{len(self.files):06d}.npy"
        np.save(path, np.ascontiguousarray(values, dtype=np.float64))
        self.files.append(path)

    def chunks(self) -> Iterator[np.ndarray]:
        for path in self.files:
            yield np.load(path, mmap_mode="r")
