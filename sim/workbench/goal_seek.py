"""Goal seek: which configurations of a sweep keep the p90 user-month under a limit (and quality above a
floor), best quality first; and, when none does, what the nearest miss costs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sim.workbench.render import score, usd
from sim.workbench.sweep import Sweep, SweepPoint


@dataclass(frozen=True, slots=True)
class GoalSeek:
    """The answer: the passing points (best quality first, then cheapest p90) and the cheapest point."""

    max_per_user_month: float
    min_quality: float | None
    passing: list[SweepPoint]
    cheapest: SweepPoint | None  # lowest p90 user-month of the whole sweep
    under_limit_best_quality: SweepPoint | None  # best quality among points under the cost limit

    @property
    def found(self) -> bool:
        return bool(self.passing)

    def message(self) -> str:
        """One plain sentence: what passes, or why nothing does."""
        limit = f"p90 cost per user-month <= {usd(self.max_per_user_month)}"
        if self.min_quality is not None:
            limit += f" and quality >= {score(self.min_quality)}"
        if self.passing:
            best = self.passing[0]
            return (
                f"{len(self.passing)} configuration(s) meet {limit}; best quality: {best.label} "
                f"(quality {score(best.quality)}, p90 {usd(best.p90)})"
            )
        text = f"No configuration meets {limit}."
        if self.under_limit_best_quality is not None:
            near = self.under_limit_best_quality
            text += (
                f" Under the cost limit the best quality is {score(near.quality)} ({near.label}, "
                f"p90 {usd(near.p90)})."
            )
        elif self.cheapest is not None:
            text += (
                f" The cheapest point is {self.cheapest.label}: p90 {usd(self.cheapest.p90)} per user-month "
                f"at quality {score(self.cheapest.quality)}."
            )
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "max_per_user_month_usd": self.max_per_user_month,
            "min_quality": self.min_quality,
            "found": self.found,
            "message": self.message(),
            "passing": [point.to_json() for point in self.passing],
            "cheapest": self.cheapest.to_json() if self.cheapest else None,
        }


def goal_seek(sweep: Sweep, max_per_user_month: float, min_quality: float | None = None) -> GoalSeek:
    """The points whose p90 user-month is at most the limit and whose quality is at least the floor."""
    under = [point for point in sweep.points if point.p90 <= max_per_user_month]
    passing = [point for point in under if min_quality is None or point.quality >= min_quality]
    passing.sort(key=lambda point: (-point.quality, point.p90))
    cheapest = min(sweep.points, key=lambda point: point.p90, default=None)
    best_under = max(under, key=lambda point: (point.quality, -point.p90), default=None)
    return GoalSeek(max_per_user_month, min_quality, passing, cheapest, best_under)
