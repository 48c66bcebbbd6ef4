"""budget.outbox: what is kept, what is due when, and that a file outbox holds every report it accepted --
across a close, a SIGKILL right after `add` returned, and never for two processes at once."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from budget.errors import BudgetError, OutboxError
from budget.outbox import Outbox

REPO = Path(__file__).resolve().parents[2]


def test_memory_outbox_keeps_until_forgotten_and_the_first_report_of_an_id_wins() -> None:
    async def scenario() -> None:
        outbox = await Outbox.open()
        assert outbox.path is None
        await outbox.add("e1", "margins/usage/alice", b"first")
        await outbox.add("e2", "margins/usage/bob", b"second")
        await outbox.add("e1", "margins/usage/alice", b"changed")  # a waiting id: the first one stays
        assert [(r.event_id, r.payload) for r in outbox.pending()] == [("e1", b"first"), ("e2", b"second")]
        assert [r.event_id for r in outbox.take_fresh()] == ["e1", "e2"]
        assert outbox.take_fresh() == []
        assert outbox.forget(["e1", "never-reported", "e1"]) == 1  # a confirmation may name ids twice
        assert "e1" not in outbox and "e2" in outbox and len(outbox) == 1
        assert outbox.changed.is_set()
        await outbox.close()

    asyncio.run(scenario())


def test_due_on_a_new_connection_and_then_with_doubling_backoff() -> None:
    async def scenario() -> None:
        outbox = await Outbox.open()
        await outbox.add("e1", "margins/usage/alice", b"{}")
        (report,) = outbox.pending()
        assert outbox.due(1, now=0.0, resend_after_s=30, max_resend_s=600) == [report]  # never sent
        report.sends, report.sent_on, report.sent_at = 1, 1, 100.0
        assert outbox.due(1, now=129.0, resend_after_s=30, max_resend_s=600) == []
        assert outbox.due(1, now=130.0, resend_after_s=30, max_resend_s=600) == [report]
        assert outbox.due(2, now=100.0, resend_after_s=30, max_resend_s=600) == [report]  # a new broker
        report.sends = 3  # waits 30, 60, then 120 s
        assert outbox.due(1, now=219.0, resend_after_s=30, max_resend_s=600) == []
        assert outbox.due(1, now=220.0, resend_after_s=30, max_resend_s=600) == [report]
        report.sends = 60  # capped, and no overflow
        assert outbox.due(1, now=700.0, resend_after_s=30, max_resend_s=600) == [report]
        report.in_flight = True
        assert outbox.due(2, now=700.0, resend_after_s=30, max_resend_s=600) == []

    asyncio.run(scenario())


def test_a_file_outbox_gives_back_what_was_not_confirmed(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"

    async def first() -> None:
        outbox = await Outbox.open(path)
        assert outbox.path == path
        await asyncio.gather(
            *(outbox.add(f"e{i}", "margins/usage/alice", f"p{i}".encode()) for i in range(50))
        )
        outbox.forget([f"e{i}" for i in range(0, 50, 2)])
        await outbox.close()

    async def second() -> list[tuple[str, str, bytes]]:
        outbox = await Outbox.open(path)
        try:
            return [(r.event_id, r.topic, r.payload) for r in outbox.pending()]
        finally:
            await outbox.close()

    asyncio.run(first())
    kept = asyncio.run(second())
    assert kept == [(f"e{i}", "margins/usage/alice", f"p{i}".encode()) for i in range(1, 50, 2)]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # kept in the file
    db.close()

    async def durability() -> int:
        outbox = await Outbox.open(path)
        try:  # synchronous is the connection's own setting: FULL (2) fsyncs the WAL at every commit
            return int(outbox._journal._db.execute("PRAGMA synchronous").fetchone()[0])  # type: ignore[union-attr]
        finally:
            await outbox.close()

    assert asyncio.run(durability()) == 2


def test_a_report_is_on_disk_when_add_returns(tmp_path: Path) -> None:
    """A child adds reports and prints each id once `add` returned, then SIGKILLs itself in the middle of
    more adds: every printed id is in the file (no close, no flush, no clean exit)."""
    path = tmp_path / "outbox.db"
    child = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        from budget.outbox import Outbox

        async def main():
            outbox = await Outbox.open({str(path)!r})
            for i in range(200):
                await outbox.add(f"e{{i}}", "margins/usage/alice", b"x" * 300)
                print(f"e{{i}}", flush=True)
            late = [outbox.add(f"late{{i}}", "margins/usage/alice", b"y") for i in range(50)]
            pending = [asyncio.ensure_future(add) for add in late]
            await asyncio.sleep(0)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == -9, result.stderr
    acknowledged = result.stdout.split()
    assert len(acknowledged) == 200

    async def reopen() -> set[str]:
        outbox = await Outbox.open(path)
        try:
            return {r.event_id for r in outbox.pending()}
        finally:
            await outbox.close()

    kept = asyncio.run(reopen())
    assert set(acknowledged) <= kept


def test_one_process_per_outbox_file(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys\nfrom budget.outbox import Outbox\n"
            f"async def main():\n    await Outbox.open({str(path)!r})\n    print('open', flush=True)\n"
            "    await asyncio.sleep(120)\nasyncio.run(main())",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(OutboxError, match="in use by another process") as caught:
            asyncio.run(Outbox.open(path))
        assert caught.value.path == str(path) and isinstance(caught.value, BudgetError)
    finally:
        holder.kill()
        holder.wait(timeout=10)

    async def after() -> int:  # the lock goes with the process that held it
        outbox = await Outbox.open(path)
        await outbox.close()
        return len(outbox)

    assert asyncio.run(after()) == 0


def test_a_file_that_is_no_outbox_is_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"this is not an SQLite database, just some text " * 100)
    with pytest.raises(OutboxError, match=r"outbox .*notes\.txt: cannot use: file is not a database"):
        asyncio.run(Outbox.open(junk))
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(OutboxError, match="written by a newer margins"):
        asyncio.run(Outbox.open(newer))
    with pytest.raises(OutboxError, match="cannot open"):
        asyncio.run(Outbox.open(tmp_path / "no-such-directory" / "outbox.db"))


def test_a_write_that_fails_raises_and_keeps_the_report_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    async def scenario() -> None:
        outbox = await Outbox.open(tmp_path / "outbox.db")
        monkeypatch.setattr("budget.outbox._Journal._write", disk_full)
        with pytest.raises(OutboxError, match="cannot write: database or disk is full"):
            await outbox.add("e1", "margins/usage/alice", b"{}")
        assert "e1" in outbox and [r.event_id for r in outbox.take_fresh()] == ["e1"]  # still sent
        await outbox.close()

    asyncio.run(scenario())
