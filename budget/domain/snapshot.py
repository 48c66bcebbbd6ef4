"""A ledger snapshot: the ledger's whole state at a store seq, as named numpy parts plus JSON metadata.

Taking one (`Ledger.to_snapshot`) copies the arrays that change in place and shares the ones that never
do, so it can run between two events on the event loop; `encode` (JSON-able metadata and a dict of 1-D
numpy arrays, each to be written as a file of raw bytes) is meant for a worker thread. `decode` checks
every part against the metadata and raises SnapshotError naming the first that does not fit: a snapshot
is an optimisation, never the truth, and the caller falls back to an older one or to a full replay.

Parts (n = number of users, m a month "YYYY-MM" that can still change):

    users.ids             uint8   the user ids' UTF-8 bytes, back to back, by index
    users.ends            int64   n: where each user's id ends in users.ids
    users.cap             int64   <= n: the user's own cap in nano-dollars, -1 when not set
    users.plan            int16   <= n: index into meta["plan_names"], -1 when not set
    users.zone            int16   <= n: index into meta["zone_names"], -1 when not set
                                  (the settings arrays stop after the last user an admin configured)
    month.m.spent         int64   n: settled nano-dollars in month m
    month.m.reserved      int64   n: reserved nano-dollars in month m
    month.m.flags         uint8   n: limits announced in month m (1 soft, 2 cap)
    reservations          uint8   msgpack list of the open ReservationGranted events
    expired               uint8   msgpack list of [reservation_id, user_id, month, forget_after]
    seen.*                        the dedupe index (budget.domain.seen.FrozenSeen.parts)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import numpy as np

from budget.domain.events import ReservationGranted
from budget.domain.seen import FrozenSeen
from budget.errors import SnapshotError

FORMAT = 1

Remembered = tuple[str, str, str, datetime]  # reservation_id, user_id, month, forget_after

_reservations_decoder = msgspec.msgpack.Decoder(list[ReservationGranted])
_expired_decoder = msgspec.msgpack.Decoder(list[tuple[str, str, str, datetime]])


@dataclass(frozen=True, slots=True, eq=False)
class MonthArrays:
    """One month's per-user arrays (each of length n)."""

    spent: np.ndarray
    reserved: np.ndarray
    flags: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class LedgerSnapshot:
    """The ledger's state after the event with store sequence number `seq` (given by the caller)."""

    seq: int
    horizon: datetime | None
    next_prune: datetime | None
    dead_letters: int
    denials: int
    first_window_month: int
    user_ids: bytes
    user_ends: np.ndarray
    cap: np.ndarray
    plan: np.ndarray
    zone: np.ndarray
    plan_names: list[str]
    zone_names: list[str]
    months: dict[str, MonthArrays]
    reservations: list[ReservationGranted]
    expired: list[Remembered]
    seen: FrozenSeen

    def encode(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(metadata, parts): metadata is JSON-able and lists every part with its dtype and length."""
        parts: dict[str, np.ndarray] = {
            "users.ids": _bytes(self.user_ids),
            "users.ends": self.user_ends,
            "users.cap": self.cap,
            "users.plan": self.plan,
            "users.zone": self.zone,
            "reservations": _bytes(msgspec.msgpack.encode(self.reservations)),
            "expired": _bytes(msgspec.msgpack.encode(self.expired)),
        }
        for month, arrays in self.months.items():
            parts[f"month.{month}.spent"] = arrays.spent
            parts[f"month.{month}.reserved"] = arrays.reserved
            parts[f"month.{month}.flags"] = arrays.flags
        parts.update(self.seen.parts())
        meta = {
            "format": FORMAT,
            "seq": self.seq,
            "horizon": _iso(self.horizon),
            "next_prune": _iso(self.next_prune),
            "dead_letters": self.dead_letters,
            "denials": self.denials,
            "first_window_month": self.first_window_month,
            "users": len(self.user_ends),
            "plan_names": self.plan_names,
            "zone_names": self.zone_names,
            "months": sorted(self.months),
            "parts": {name: {"dtype": part.dtype.str, "length": len(part)} for name, part in parts.items()},
        }
        return meta, parts

    @classmethod
    def decode(cls, meta: Mapping[str, Any], parts: Mapping[str, np.ndarray]) -> LedgerSnapshot:
        """The snapshot `encode` described; raises SnapshotError naming what does not fit."""
        try:
            return _decode(meta, parts)
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, msgspec.DecodeError) as error:
            raise SnapshotError("meta", f"unreadable ({type(error).__name__}: {error})") from error


def _decode(meta: Mapping[str, Any], parts: Mapping[str, np.ndarray]) -> LedgerSnapshot:
    if meta.get("format") != FORMAT:
        raise SnapshotError("meta", f"format {meta.get('format')!r}; this ledger reads format {FORMAT}")
    listed: Mapping[str, Mapping[str, Any]] = meta["parts"]
    for name, spec in listed.items():
        part = parts.get(name)
        if part is None:
            raise SnapshotError(name, "missing")
        if part.ndim != 1 or part.dtype.str != spec["dtype"] or len(part) != spec["length"]:
            raise SnapshotError(
                name,
                f"expected {spec['length']} values of {spec['dtype']}, "
                f"found {part.shape} of {part.dtype.str}",
            )
    users = int(meta["users"])
    if len(parts["users.ends"]) != users:
        raise SnapshotError("users.ends", f"{len(parts['users.ends'])} ids for {users} users")
    months: dict[str, MonthArrays] = {}
    for month in meta["months"]:
        arrays = [parts[f"month.{month}.{kind}"] for kind in ("spent", "reserved", "flags")]
        if any(len(array) != users for array in arrays):
            raise SnapshotError(f"month.{month}", f"arrays are not of length {users}")
        months[month] = MonthArrays(*arrays)
    try:
        seen = FrozenSeen.from_parts(parts)
    except ValueError as error:
        raise SnapshotError("seen", str(error)) from error
    return LedgerSnapshot(
        seq=int(meta["seq"]),
        horizon=_instant(meta["horizon"]),
        next_prune=_instant(meta["next_prune"]),
        dead_letters=int(meta["dead_letters"]),
        denials=int(meta["denials"]),
        first_window_month=int(meta["first_window_month"]),
        user_ids=parts["users.ids"].tobytes(),
        user_ends=parts["users.ends"],
        cap=parts["users.cap"],
        plan=parts["users.plan"],
        zone=parts["users.zone"],
        plan_names=[str(name) for name in meta["plan_names"]],
        zone_names=[str(name) for name in meta["zone_names"]],
        months=months,
        reservations=_msgpack(parts, "reservations", _reservations_decoder),
        expired=_msgpack(parts, "expired", _expired_decoder),
        seen=seen,
    )


def _iso(instant: datetime | None) -> str | None:
    return None if instant is None else instant.isoformat()


def _instant(text: str | None) -> datetime | None:
    if text is None:
        return None
    instant = datetime.fromisoformat(text)
    if instant.tzinfo is None:
        raise SnapshotError("meta", f"time {text!r} has no time zone")
    return instant


def _bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _msgpack(parts: Mapping[str, np.ndarray], name: str, decoder: msgspec.msgpack.Decoder[Any]) -> Any:
    try:
        return decoder.decode(parts[name].tobytes())
    except (msgspec.DecodeError, KeyError) as error:
        raise SnapshotError(name, f"does not decode: {error}") from error
