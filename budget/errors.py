"""The error root of the budget package: every failure it raises on purpose is a BudgetError."""

from __future__ import annotations


class BudgetError(Exception):
    """Root of the budget package's errors; subclasses carry the fields that explain them."""


class UnknownModelError(BudgetError):
    """A model that the price catalog does not list: it is never free, so it cannot be priced."""

    def __init__(self, model: str, known: tuple[str, ...]) -> None:
        self.model = model
        self.known = known
        super().__init__(f"unknown model {model!r}; the price catalog lists: {', '.join(known)}")


class PriceError(BudgetError):
    """A price entry that cannot be turned into an exact per-token price."""

    def __init__(self, where: str, field: str, reason: str) -> None:
        self.where = where
        self.field = field
        self.reason = reason
        super().__init__(f"{where}: {field}: {reason}")


class ConfigError(BudgetError):
    """An enforcer config file (or value) that cannot be used: names the file, the field and what was
    expected."""

    def __init__(self, where: str, field: str, reason: str) -> None:
        self.where = where
        self.field = field
        self.reason = reason
        super().__init__(f"{where}: {field}: {reason}")


class StoreError(BudgetError):
    """The event store cannot be opened, read or written at `path`."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"event store {path}: {reason}")


class QueryError(BudgetError):
    """A spend query that cannot be answered: a bad month, filter or SQL text."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")
