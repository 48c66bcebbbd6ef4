"""What of one message cannot be applied, summed up as one dead letter.

A message is never amplified: whatever it holds -- one bad object, or a 64 KB array of 32,000 bad items --
it becomes at most one `DeadLettered` record and one dead-letter publish. The record keeps the original
payload whole (re-sending it is harmless: event ids make its good items duplicates), how many items were
rejected (`count`), the first item's reason, and a detail naming the first few.

Pure: no IO, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from budget.domain.events import DeadLettered

MAX_LISTED = 5  # rejected items a dead letter's detail names; the count says how many there were


@dataclass(slots=True)
class Rejection:
    """The rejected part of one message: `add` one entry per rejected item, then `dead_letter`.

    `items` is how many items the message held (1 for a single object). `request_id` and `reply_to` are
    salvaged from a bad authorization so its sender gets a deny, not a timeout (`reply_to` only if it is a
    safe reply topic). `event_ids` are the ids that rejected usage items named: settled too (dead-lettered),
    so they are confirmed to a sender that asked.
    """

    items: int = 1
    user_id: str | None = None
    request_id: str | None = None
    reply_to: str | None = None
    count: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)  # in order of first appearance
    listed: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)

    @property
    def listing(self) -> bool:
        """Whether the next item's detail would still be listed (callers skip formatting it if not)."""
        return len(self.listed) < MAX_LISTED

    def add(self, reason: str, detail: str | None, event_id: str | None = None) -> None:
        """One more rejected item; `detail` may be None once `listing` is False."""
        self.count += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if detail is not None and len(self.listed) < MAX_LISTED:
            self.listed.append(detail)
        if event_id is not None:
            self.event_ids.append(event_id)

    @property
    def reason(self) -> str:
        """The first rejected item's reason."""
        return next(iter(self.by_reason), "internal_error")

    @property
    def detail(self) -> str:
        """For people: the reason of a lone item, or "N of M items rejected; item 0: ...; ..."."""
        if self.items == 1 and self.count == 1 and self.listed:
            return self.listed[0]
        more = "; ..." if self.count > len(self.listed) else ""
        return f"{self.count:,} of {self.items:,} items rejected; {'; '.join(self.listed)}{more}"

    def dead_letter(self, now: datetime, topic: str, payload: bytes) -> DeadLettered:
        """The one dead letter of the message: its original payload, the first reason, the count."""
        return DeadLettered.of(
            ts=now,
            topic=topic,
            payload=payload,
            reason=self.reason,
            detail=self.detail,
            user_id=self.user_id,
            event_id=self.event_ids[0] if self.count == 1 and self.event_ids else None,
            count=self.count,
        )
