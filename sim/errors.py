"""The error root of the simulator: every failure it raises on purpose is a SimError."""

from __future__ import annotations


class SimError(Exception):
    """Root of the sim package's errors."""


class ScenarioError(SimError):
    """A scenario file that cannot be used: names the file, the field and what was expected."""

    def __init__(self, path: str, field: str, reason: str) -> None:
        self.path = path
        self.field = field
        self.reason = reason
        super().__init__(f"{path}: {field}: {reason}")
