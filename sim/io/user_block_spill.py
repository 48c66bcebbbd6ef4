"""Rows spilled to a directory bucketed by block of users, and read back one block at a time.

A streaming run with a per-user cap cannot fold a finished request into its figures: the cap decides
per user over the whole month (sim/model/caps.py). So its finished requests and their attempt rows are
written as they come, each row to the block of its user (user // users_per_block), and read back after
the run a block at a time: one block's rows in memory, never the month's.

Layout: DIR/TABLE/block-BBBBBB/part-PPPPPP.npz, one uncompressed .npz per (table, block, part) holding
the part's columns; a part is one `add` call. A block's rows read back are its parts in the order they
were added, concatenated. A column missing from some parts (an attempt log column absent on a tick: no
such tokens) reads back as zeros there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import ArgumentError


class UserBlockSpill:
    """Tables of rows, each row belonging to a user, spilled by user block under one directory."""

    def __init__(self, directory: Path, users_per_block: int) -> None:
        if users_per_block < 1:
            raise ArgumentError("users_per_block", f"must be at least 1, not {users_per_block}")
        self.directory, self.users_per_block = directory, users_per_block
        self._parts = 0

    def add(self, table: str, user: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        """Write rows (`user`: each row's user; `columns`: same length as `user`) to their users' blocks."""
        for name, values in columns.items():
            if values.shape[0] != user.size:
                raise ArgumentError(name, f"has {values.shape[0]} rows for {user.size} users")
        if not user.size:
            return
        block = user // self.users_per_block
        order = np.argsort(block, kind="stable")  # rows keep their order within a block
        block = block[order]
        starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
        ends = np.r_[starts[1:], block.size]
        part = self._parts
        self._parts += 1
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            rows = order[start:end]
            folder = self.directory / table / f"block-{int(block[start]):06d}"
            folder.mkdir(parents=True, exist_ok=True)
            arrays: dict[str, Any] = {name: values[rows] for name, values in columns.items()}
            with (folder / f"part-{part:06d}.npz").open("wb") as file:
                np.savez(file, **arrays)

    def blocks(self, table: str) -> list[int]:
        """The blocks that hold rows of `table`, ascending."""
        folder = self.directory / table
        if not folder.is_dir():
            return []
        return sorted(int(path.name.removeprefix("block-")) for path in folder.glob("block-*"))

    def read(self, table: str, block: int) -> dict[str, np.ndarray]:
        """A block's rows of `table`, in the order they were added (no rows: {})."""
        parts = []
        for path in sorted((self.directory / table / f"block-{block:06d}").glob("part-*.npz")):
            with np.load(path) as stored:
                parts.append({name: stored[name] for name in stored.files})
        if not parts:
            return {}
        rows = [next(iter(part.values())).shape[0] for part in parts]
        names = list(dict.fromkeys(name for part in parts for name in part))
        joined = {}
        for name in names:
            like = next(part[name] for part in parts if name in part)
            joined[name] = np.concatenate(
                [
                    part[name] if name in part else np.zeros(count, dtype=like.dtype)
                    for part, count in zip(parts, rows, strict=True)
                ]
            )
        return joined
