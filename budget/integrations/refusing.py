"""The base of a guarded client's objects: an attribute they do not define is refused with NotGuarded,
never passed through to the SDK client, so that a guarded client hands out no unguarded call path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from budget.errors import NotGuarded


class OnlyGuarded:
    """An object of a guarded client whose SDK path is `path` (such as "chat.completions", or "" for the
    client itself): a missing attribute raises NotGuarded naming the SDK method it would have been."""

    path = ""

    if not TYPE_CHECKING:  # a type checker keeps flagging such attributes as missing, as it should

        def __getattr__(self, name: str) -> None:
            if name.startswith("__") and name.endswith("__"):  # protocol probes (copy, pickle, inspect)
                raise AttributeError(name)
            raise NotGuarded(f"{self.path}.{name}" if self.path else name)
