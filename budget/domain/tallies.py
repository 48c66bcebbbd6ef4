"""The ledger's per-user state in numpy arrays, by user index (budget.domain.users): settings and months.

Each month that can still change has its own arrays of settled and reserved nano-dollars and of the
limits already announced; a month that can no longer change is dropped whole. Arrays grow by doubling;
values are read and written through memoryviews, which cost a fraction of numpy's per-item indexing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNSET = -1  # a setting no admin gave: the config decides
SOFT_FLAG = 1  # the soft limit was announced for this user-month
CAP_FLAG = 2  # the cap was announced
_MIN_SIZE = 1024


def _grown(array: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    bigger = np.full(max(size, 2 * len(array), _MIN_SIZE), fill, dtype=array.dtype)
    bigger[: len(array)] = array
    return bigger


@dataclass(frozen=True, slots=True)
class Settings:
    """What an admin set for a user (None: not set, the config decides)."""

    cap_nanos: int | None = None
    plan: str | None = None
    timezone: str | None = None


UNCONFIGURED = Settings()


class UserSettings:
    """Each user's settings (by user index) as codes into small name tables."""

    def __init__(self) -> None:
        self.plan_names: list[str] = []
        self.zone_names: list[str] = []
        self._plan_codes: dict[str, int] = {}
        self._zone_codes: dict[str, int] = {}
        self._set_arrays(
            np.full(0, UNSET, np.int64), np.full(0, UNSET, np.int16), np.full(0, UNSET, np.int16)
        )

    def _set_arrays(self, cap: np.ndarray, plan: np.ndarray, zone: np.ndarray) -> None:
        self.cap, self.plan, self.zone = cap, plan, zone
        self._cap, self._plan, self._zone = cap.data, plan.data, zone.data

    def zone_of(self, index: int | None) -> str | None:
        """The time zone an admin set for this user, if any."""
        if index is None or index >= len(self._zone):
            return None
        code = self._zone[index]
        return None if code == UNSET else self.zone_names[code]

    def of(self, index: int | None) -> Settings:
        """Everything an admin set for the user at `index`."""
        if index is None or index >= len(self._cap):
            return UNCONFIGURED
        cap, plan, zone = self._cap[index], self._plan[index], self._zone[index]
        if cap == UNSET and plan == UNSET and zone == UNSET:
            return UNCONFIGURED
        return Settings(
            None if cap == UNSET else cap,
            None if plan == UNSET else self.plan_names[plan],
            None if zone == UNSET else self.zone_names[zone],
        )

    def configure(self, index: int, cap_nanos: int | None, plan: str | None, timezone: str | None) -> None:
        """Replace each setting of the user at `index` that is given (not None)."""
        if index >= len(self._cap):
            size = index + 1
            self._set_arrays(
                _grown(self.cap, size, UNSET), _grown(self.plan, size, UNSET), _grown(self.zone, size, UNSET)
            )
        if cap_nanos is not None:
            self._cap[index] = cap_nanos
        if plan is not None:
            self._plan[index] = _code(plan, self.plan_names, self._plan_codes)
        if timezone is not None:
            self._zone[index] = _code(timezone, self.zone_names, self._zone_codes)

    def configured(self) -> list[int]:
        """The indexes of users an admin configured."""
        touched = (self.cap != UNSET) | (self.plan != UNSET) | (self.zone != UNSET)
        found: list[int] = np.flatnonzero(touched).tolist()
        return found

    def copies(self, users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the settings arrays up to the last user an admin configured (the users after it have
        none), for a snapshot."""
        configured = self.configured()
        size = min(users, configured[-1] + 1) if configured else 0
        return self.cap[:size].copy(), self.plan[:size].copy(), self.zone[:size].copy()

    def kept(self, keep: np.ndarray) -> None:
        """Keep the settings of the users `keep` marks (by old index), renumbered in order."""
        size = min(len(self.cap), len(keep))
        mask = keep[:size]
        self._set_arrays(self.cap[:size][mask], self.plan[:size][mask], self.zone[:size][mask])

    def restore(
        self,
        users: int,
        cap: np.ndarray,
        plan: np.ndarray,
        zone: np.ndarray,
        plan_names: list[str],
        zone_names: list[str],
    ) -> None:
        """Take the state a snapshot recorded; raises ValueError when its parts disagree."""
        if not len(cap) == len(plan) == len(zone) <= users:
            raise ValueError("settings arrays differ in length or outnumber the users")
        for codes, names in ((plan, plan_names), (zone, zone_names)):
            if len(codes) and (int(codes.min()) < UNSET or int(codes.max()) >= len(names)):
                raise ValueError("a settings code is outside its name table")
        self.plan_names, self.zone_names = plan_names, zone_names
        self._plan_codes = {name: i for i, name in enumerate(plan_names)}
        self._zone_codes = {name: i for i, name in enumerate(zone_names)}
        self._set_arrays(cap.astype(np.int64), plan.astype(np.int16), zone.astype(np.int16))


def _code(name: str, names: list[str], codes: dict[str, int]) -> int:
    code = codes.get(name)
    if code is None:
        code = codes[name] = len(names)
        names.append(name)
    return code


class MonthTally:
    """One month's settled and reserved nano-dollars and announced limits, per user index."""

    def __init__(
        self,
        spent: np.ndarray | None = None,
        reserved: np.ndarray | None = None,
        flags: np.ndarray | None = None,
    ) -> None:
        self._set_arrays(
            np.zeros(0, np.int64) if spent is None else spent.astype(np.int64),
            np.zeros(0, np.int64) if reserved is None else reserved.astype(np.int64),
            np.zeros(0, np.uint8) if flags is None else flags.astype(np.uint8),
        )

    def _set_arrays(self, spent: np.ndarray, reserved: np.ndarray, flags: np.ndarray) -> None:
        if not len(spent) == len(reserved) == len(flags):
            raise ValueError("a month's arrays differ in length")
        self.spent, self.reserved, self.flags = spent, reserved, flags
        self._spent, self._reserved, self._flags = spent.data, reserved.data, flags.data

    def _reach(self, index: int) -> None:
        if index >= len(self._spent):
            size = index + 1
            self._set_arrays(_grown(self.spent, size), _grown(self.reserved, size), _grown(self.flags, size))

    def totals(self, index: int | None) -> tuple[int, int]:
        """(spent, reserved) of the user at `index`."""
        if index is None or index >= len(self._spent):
            return 0, 0
        return self._spent[index], self._reserved[index]

    def add_spent(self, index: int, nanos: int) -> None:
        """Settled spend of the user at `index` grows by `nanos`."""
        if index >= len(self._spent):  # (nearly every call: a usage) no call to _reach unless it grows
            self._reach(index)
        self._spent[index] += nanos

    def add_reserved(self, index: int, nanos: int) -> None:
        """Reserved spend of the user at `index` changes by `nanos` (negative on release)."""
        self._reach(index)
        self._reserved[index] += nanos

    def flags_of(self, index: int | None) -> int:
        """The limits already announced for the user at `index` (SOFT_FLAG | CAP_FLAG bits)."""
        if index is None or index >= len(self._flags):
            return 0
        flags: int = self._flags[index]
        return flags

    def set_flag(self, index: int, flag: int) -> None:
        """Remember that a limit was announced for the user at `index`."""
        self._reach(index)
        self._flags[index] |= flag

    def touched(self, users: int) -> np.ndarray:
        """For each of `users` indexes: whether this month holds anything of that user."""
        size = min(users, len(self.spent))
        touched = np.zeros(users, dtype=bool)
        touched[:size] = (self.spent[:size] != 0) | (self.reserved[:size] != 0) | (self.flags[:size] != 0)
        return touched

    def kept(self, keep: np.ndarray) -> None:
        """Keep the entries of the users `keep` marks (by old index), renumbered in order."""
        size = min(len(self.spent), len(keep))
        mask = keep[:size]
        self._set_arrays(self.spent[:size][mask], self.reserved[:size][mask], self.flags[:size][mask])

    def active(self) -> np.ndarray:
        """Indexes of users with settled or reserved spend in this month."""
        found: np.ndarray = np.flatnonzero((self.spent != 0) | (self.reserved != 0))
        return found

    def copies(self, users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the arrays, cut or padded to `users` entries (for a snapshot)."""
        return tuple(  # type: ignore[return-value]
            _fitted(array, users) for array in (self.spent, self.reserved, self.flags)
        )


def _fitted(array: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    if len(array) >= size:
        return array[:size].copy()
    return _grown(array, size, fill)[:size].copy()
