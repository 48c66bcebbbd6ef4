"""The bases of a guarded client's objects: an attribute they do not define is refused with NotGuarded,
never passed through to the SDK client, so that a guarded client hands out no unguarded call path; and
what every guarded endpoint (chat.completions, responses, messages) holds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

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


SdkClient = TypeVar("SdkClient")
Budget = TypeVar("Budget")  # BudgetThread for a synchronous SDK client, BudgetClient for an async one


class GuardedEndpoint(OnlyGuarded, Generic[SdkClient, Budget]):
    """One guarded SDK endpoint: the SDK client it calls, the budget it asks, and for whom and what it
    asks (`max_input_tokens`: the prompt bound's override, None to measure the prompt)."""

    def __init__(
        self, client: SdkClient, budget: Budget, user_id: str, feature: str, max_input_tokens: int | None
    ) -> None:
        self._client, self._budget = client, budget
        self._user_id, self._feature, self._max_input_tokens = user_id, feature, max_input_tokens
