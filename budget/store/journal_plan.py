"""Which copy of each seq a repaired journal takes (pure): `plan_journal` over the copies repair found.

A copy is a journal file (listed and verified, unlisted, or in quarantine/) or a run of log lines. The
plan holds seqs 0..N once each, preferring whole files over parts, verified files over the rest, and
files over the log, so repair rewrites as little as it can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from budget.store.manifest import Segment

LOG = "log"


@dataclass(frozen=True, slots=True)
class Source:
    """A copy of seqs first..last: a journal file (path relative to the store) or log lines."""

    first: int
    last: int
    file: str  # LOG for log lines
    verified: bool = False  # a listed segment whose sha256 matched
    segment: Segment | None = None  # the file's manifest entry when verified
    bodies: tuple[bytes, ...] = ()  # log lines

    @property
    def rank(self) -> int:
        """Preference among copies: a verified listed file, another journal file, quarantine, the log."""
        if self.verified:
            return 3
        if self.file.startswith("journal/"):
            return 2
        return 1 if self.file != LOG else 0


@dataclass(frozen=True, slots=True)
class Piece:
    """One stretch of the rebuilt journal: seqs first..last taken from `source`."""

    first: int
    last: int
    source: Source

    @property
    def whole(self) -> bool:
        return self.source.file != LOG and (self.first, self.last) == (self.source.first, self.source.last)


def plan_journal(sources: Sequence[Source]) -> tuple[list[Piece], tuple[int, int] | None]:
    """A journal holding seqs 0..N once each from the sources, and the first range of seqs no source
    holds while later ones do (None when nothing is missing). At each seq the source taken is the one
    that starts there (no file cut in two), then the most trusted, then the one that reaches furthest; a
    source taken from its middle is taken only up to where another one starts."""
    pieces: list[Piece] = []
    at = 0
    while True:
        holding = [s for s in sources if s.first <= at <= s.last]
        if not holding:
            later = [s.first for s in sources if s.first > at]
            return pieces, ((at, min(later) - 1) if later else None)
        best = max(holding, key=lambda s: (s.first == at, s.rank, s.last))
        end = best.last
        if best.first != at:  # cut from a file: only up to where another copy starts whole
            end = min([end, *(s.first - 1 for s in sources if at < s.first <= best.last)])
        pieces.append(Piece(at, end, best))
        at = end + 1
