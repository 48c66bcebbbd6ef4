"""The error root of the simulator: every failure it raises on purpose is a SimError."""

from __future__ import annotations


class SimError(Exception):
    """Root of the sim package's errors."""


class InputError(SimError):
    """Input that cannot be used, named by where it is (a file, a store) and what is wrong."""

    def __init__(self, where: str, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {reason}")


class FieldError(SimError):
    """A file that cannot be used: names the file, the field (or the place in it) and what was expected."""

    def __init__(self, path: str, field: str, reason: str) -> None:
        self.path = path
        self.field = field
        self.reason = reason
        super().__init__(f"{path}: {field}: {reason}")


class ScenarioError(FieldError):
    """A scenario file that cannot be used."""
