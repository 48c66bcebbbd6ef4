"""What a decision needs to know of a user, worked out once and kept for the users seen lately.

A usage decision asks for the user's index, zone, cap and plan, and hashes the event's key from the user
id. Asked of the compact state each time (budget.domain.users, budget.domain.tallies) that is a hash
probe, a few array reads and half a dozen calls per event; the events of one message nearly always share
a user, so the answer is kept in a small dict. The dict is bounded (cleared when full), and the ledger
drops an entry whenever what it was worked out from changes: the user's settings, or the user numbering.
"""

from __future__ import annotations

from dataclasses import dataclass

from budget.domain.config import Plan
from budget.domain.seen import KeyHasher, key_hasher
from budget.domain.tallies import Settings

RECENT_USERS = 4096  # a few MB at most; enough for every user of a busy second


@dataclass(slots=True)
class Profile:
    """A user as decisions see them: `index` in the user index (None for a user not yet in it), the
    settings an admin gave, and what they resolve to (zone, cap, plan)."""

    user_id: str
    index: int | None
    settings: Settings
    zone: str
    cap: int
    plan: Plan
    _keys: KeyHasher | None = None

    @property
    def keys(self) -> KeyHasher:
        """The hasher of this user's usage keys (budget.domain.seen.usage_key_of), made on first use."""
        if self._keys is None:
            self._keys = key_hasher(self.user_id)
        return self._keys


class RecentUsers:
    """Profiles by user id, at most `limit` of them."""

    def __init__(self, limit: int = RECENT_USERS) -> None:
        self._limit = limit
        self._profiles: dict[str, Profile] = {}
        self.get = self._profiles.get  # the hot path: one dict probe, no method call around it

    def keep(self, profile: Profile) -> None:
        """Remember a profile (all are forgotten first when the dict is full)."""
        if len(self._profiles) >= self._limit:
            self._profiles.clear()
        self._profiles[profile.user_id] = profile

    def forget(self, user_id: str) -> None:
        """Drop one user's profile: their settings changed."""
        self._profiles.pop(user_id, None)

    def clear(self) -> None:
        """Drop every profile: the users were renumbered."""
        self._profiles.clear()
