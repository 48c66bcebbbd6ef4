"""An application's outbox: the usage reports it made that the enforcer has not confirmed yet.

`BudgetClient.report` adds a report here before the report is first published, and forgets it when the
enforcer's confirmation names its event id (`{"confirmed": [...]}` on margins/replies/<client id>/confirm,
published after the commit that made the event durable). Until then the client re-sends it: on every new
broker connection, and with backoff while it stays unconfirmed. Event ids make a re-send harmless.

Two kinds:

- in memory (the default): reports survive broker restarts and reconnects, not this process;
- a file (`Outbox.open(PATH)`): SQLite in WAL mode with synchronous=FULL, so a report is on disk (its WAL
  frame fsync'd) before `add` returns, and the next process to open the file re-sends what this one left.
  Concurrent adds share one transaction (group commit). The file is held with an exclusive lock, so two
  processes never share one outbox.

Memory holds every unconfirmed report in both kinds (the file is for recovery, not for paging).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from budget.errors import OutboxError

log = logging.getLogger("margins.client")

SCHEMA_VERSION = 1
_MAX_DOUBLINGS = 20  # 2**20 x the re-send interval is beyond any cap anyone sets


@dataclass(slots=True)
class PendingReport:
    """One unconfirmed usage report and what is known of its delivery."""

    event_id: str
    topic: str
    payload: bytes
    sends: int = 0  # times a broker acknowledged it
    sent_on: int = 0  # the connection (the client's count) that last acknowledged it; 0: none yet
    sent_at: float = 0.0  # when (the event loop's clock)
    in_flight: bool = False  # published, acknowledgement not in yet


class Outbox:
    """Unconfirmed usage reports by event id; kept in memory and, when opened with a path, in a file.

    Use `await Outbox.open(path_or_none)`; `close()` when done (the file keeps what is still unconfirmed).
    """

    def __init__(self, journal: _Journal | None = None) -> None:
        self._reports: dict[str, PendingReport] = {}
        self._fresh: deque[PendingReport] = deque()
        self._journal = journal
        self.changed = asyncio.Event()  # set whenever reports are forgotten (for waiters)

    @classmethod
    async def open(cls, path: str | Path | None = None) -> Outbox:
        """An in-memory outbox, or the one in the file at `path` (created if missing) with every report it
        still holds; raises OutboxError if the file cannot be used or another process holds it."""
        if path is None:
            return cls()
        journal, rows = await _Journal.open(Path(path))
        outbox = cls(journal)
        for event_id, topic, payload in rows:
            outbox._reports[event_id] = PendingReport(event_id, topic, payload)
        if rows:
            log.info("outbox %s: %d unconfirmed usage reports to re-send", path, len(rows))
        return outbox

    @property
    def path(self) -> Path | None:
        """The outbox file, or None in memory."""
        return None if self._journal is None else self._journal.path

    def __len__(self) -> int:
        return len(self._reports)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._reports

    async def add(self, event_id: str, topic: str, payload: bytes) -> None:
        """Keep a report until it is confirmed; with a file, it is on disk when this returns.

        The first report of an event id wins (as at the enforcer): adding a waiting id again does nothing.
        If the file cannot be written, raises OutboxError, and the report is still kept in memory and sent.
        """
        if event_id in self._reports:
            return
        report = PendingReport(event_id, topic, payload)
        self._reports[event_id] = report
        try:
            if self._journal is not None:
                await self._journal.insert(event_id, topic, payload)
        finally:
            self._fresh.append(report)

    def pending(self) -> list[PendingReport]:
        """Every unconfirmed report, oldest first."""
        return list(self._reports.values())

    def take_fresh(self) -> list[PendingReport]:
        """Reports added since the last call that are still unconfirmed and never sent, oldest first."""
        fresh = [r for r in self._fresh if r.sends == 0 and not r.in_flight and r.event_id in self._reports]
        self._fresh.clear()
        return fresh

    def due(
        self, connection: int, now: float, resend_after_s: float, max_resend_s: float
    ) -> list[PendingReport]:
        """Reports to (re)send on `connection`: those it has not acknowledged (a new connection may be to a
        broker that lost them), and those unconfirmed for longer than `resend_after_s`, doubling per send
        up to `max_resend_s` (a down enforcer must not get its queue multiplied)."""
        due = []
        for report in self._reports.values():
            if report.in_flight:
                continue
            if report.sent_on != connection:
                due.append(report)
                continue
            wait = resend_after_s * 2 ** min(report.sends - 1, _MAX_DOUBLINGS)
            if now - report.sent_at >= min(wait, max_resend_s):
                due.append(report)
        return due

    def forget(self, event_ids: Iterable[str]) -> int:
        """Drop confirmed reports (unknown ids are ignored: a confirmation may come twice); returns how many
        were waiting. The file forgets them with its next write."""
        forgotten = [event_id for event_id in event_ids if self._reports.pop(event_id, None) is not None]
        if forgotten:
            if self._journal is not None:
                self._journal.delete(forgotten)
            self.changed.set()
        return len(forgotten)

    async def close(self) -> None:
        """Write what is pending and close the file (memory: nothing to do)."""
        if self._journal is not None:
            await self._journal.close()


class _Journal:
    """The outbox file: one SQLite connection used from one dedicated thread; writes grouped."""

    def __init__(self, path: Path, db: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self.path = path
        self._db = db
        self._thread = thread
        self._inserts: list[tuple[tuple[str, str, bytes], asyncio.Future[None]]] = []
        self._deletes: list[str] = []
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path) -> tuple[_Journal, list[tuple[str, str, bytes]]]:
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="margins-outbox")
        try:
            db, rows = await asyncio.get_running_loop().run_in_executor(thread, _connect, path)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(path, db, thread), rows

    async def insert(self, event_id: str, topic: str, payload: bytes) -> None:
        """Durable when this returns (raises OutboxError otherwise)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inserts.append(((event_id, topic, payload), done))
        self._start_writer()
        await done

    def delete(self, event_ids: list[str]) -> None:
        """Queued for the next write; nobody waits (a delete that is lost costs one harmless re-send)."""
        self._deletes.extend(event_ids)
        self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_all(), name="margins-outbox")

    async def _write_all(self) -> None:
        loop = asyncio.get_running_loop()
        while self._inserts or self._deletes:
            inserts, self._inserts = self._inserts, []
            deletes, self._deletes = self._deletes, []
            try:
                await loop.run_in_executor(self._thread, self._write, [row for row, _ in inserts], deletes)
            except (sqlite3.Error, OSError) as error:
                failure = OutboxError(str(self.path), f"cannot write: {error}")
                log.error("%s", failure)
                for _, done in inserts:
                    if not done.done():
                        done.set_exception(failure)
                continue
            for _, done in inserts:
                if not done.done():
                    done.set_result(None)

    def _write(self, rows: list[tuple[str, str, bytes]], deletes: list[str]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR IGNORE INTO reports (event_id, topic, payload) VALUES (?, ?, ?)", rows)
            db.executemany("DELETE FROM reports WHERE event_id = ?", [(event_id,) for event_id in deletes])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._db.close)
        finally:
            self._thread.shutdown(wait=False)


def _connect(path: Path) -> tuple[sqlite3.Connection, list[tuple[str, str, bytes]]]:
    """Open (or create) the outbox file, take its lock, and read what it holds."""
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    except sqlite3.Error as error:
        raise OutboxError(str(path), f"cannot open: {error}") from error
    try:
        # EXCLUSIVE: the first transaction below takes the file's lock and this connection keeps it, so a
        # second process fails here instead of re-sending (and forgetting) the same reports.
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise OutboxError(str(path), f"SQLite would not use WAL mode here (got {mode!r})")
        db.execute("PRAGMA synchronous=FULL")  # WAL's NORMAL may lose the last commits on power loss
        db.execute("BEGIN IMMEDIATE")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OutboxError(str(path), f"written by a newer margins (schema {version} > {SCHEMA_VERSION})")
        db.execute(
            "CREATE TABLE IF NOT EXISTS reports (event_id TEXT PRIMARY KEY, topic TEXT NOT NULL, "
            "payload BLOB NOT NULL)"
        )
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
        rows = db.execute("SELECT event_id, topic, payload FROM reports ORDER BY rowid").fetchall()
    except sqlite3.OperationalError as error:
        db.close()
        reason = "in use by another process" if "locked" in str(error) else f"cannot use: {error}"
        raise OutboxError(str(path), reason) from error
    except sqlite3.Error as error:  # e.g. "file is not a database"
        db.close()
        raise OutboxError(str(path), f"cannot use: {error}") from error
    except OutboxError:
        db.close()
        raise
    return db, [(str(e), str(t), bytes(p)) for e, t, p in rows]
