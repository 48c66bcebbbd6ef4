"""A BudgetClient for synchronous code: the client runs in its own event loop on a daemon thread.

```python
with BudgetThread(BudgetClient.connect("mqtt://127.0.0.1:1883", username="app-1", password=pw)) as budget:
    openai = guarded(OpenAI(), budget, user_id="alice")   # budget.integrations.openai
```

It is the one client of the process, not a second one: authorizations, renewals and reports all go
through it, from whichever threads make calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from budget.client import BudgetClient
from budget.errors import NotConnected

T = TypeVar("T")
STOP_TIMEOUT_S = 60.0


class BudgetThread:
    """Runs `client` (entered on `with`, left on exit, as `async with` would) in a background event loop."""

    def __init__(self, client: BudgetClient) -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="margins-budget", daemon=True)

    def __enter__(self) -> BudgetThread:
        """Start the loop and enter the client; raises what `async with client` raises."""
        self._thread.start()
        try:
            self.submit(self.client.__aenter__()).result()
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Leave the client (it waits up to its drain_timeout_s for the last confirmations), stop the loop."""
        try:
            self.submit(self.client.__aexit__(None, None, None)).result(timeout=STOP_TIMEOUT_S)
        finally:
            self._stop_loop()

    def submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine in the client's loop. Raises NotConnected outside `with`, and refuses to be called
        from that loop, where waiting on the result would block the loop that must produce it."""
        if threading.current_thread() is self._thread:
            work.close()
            raise RuntimeError("a BudgetThread cannot be waited on from its own event loop")
        if not self._thread.is_alive():  # nothing would ever run the work: say so rather than hang
            work.close()
            raise NotConnected()
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(STOP_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()
