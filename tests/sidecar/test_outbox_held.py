"""The sidecar's outbox when the database refuses writes: rounds held in memory, due() follows them, flushed later."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from agent.config import AlertSettings, StoreSettings
from agent.events import parse_event
from agent.store import Store
from agent.store.outbox import Attempt, Outbox


async def notifications(path: Path, n: int) -> None:
    store = await Store.open(StoreSettings(path=path, flush_ms=2), AlertSettings())
    store.submit_events(
        [parse_event({"id": f"e{i}", "kind": "api", "app": f"app{i}", "ts": "2026-11-22T10:00:00.000Z"},
                     '{"api":"reach","status":401}', 65536) for i in range(n)],
        "r",
    )  # fmt: skip
    await store.barrier()
    await store.close()


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_a_refused_record_is_held_followed_and_written_later(tmp_path: Path) -> None:
    """While another connection holds the write lock, a round is held: its delivered item is not due again,
    its retried one is due at its own time, and both are written once the lock is gone."""
    db = tmp_path / "m.db"
    await notifications(db, 2)
    outbox = await Outbox.open(db, AlertSettings(), busy_timeout_ms=50)
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        await outbox.sync({"w": "ordered"})  # int: each sink with its delivery order
        first, second = await outbox.due("w")
        blocker.execute("BEGIN IMMEDIATE")  # the database takes no write (as on a full disk)
        now = time.time()
        await outbox.record("w", [Attempt(first, "delivered", now, now),
                                  Attempt(second, "retry", now, now, error="503", next_attempt_at=now + 0.5)],
                            park_until=now + 0.5)  # fmt: skip
        assert outbox.held("w") == 2 and outbox.held() == 2
        assert await outbox.due("w") == []  # delivered: never again; retried: not before its time
        await asyncio.sleep(0.6)
        again = await outbox.due("w")
        assert [(i.id, i.attempts) for i in again] == [(second.id, 1)]
        assert rows(db, "SELECT count(*) FROM deliveries") == [(0,)]
        assert await outbox.flush_held("w") is False
        blocker.execute("ROLLBACK")
        assert await outbox.flush_held("w") is True
        assert outbox.held() == 0
    finally:
        blocker.close()
        await outbox.close()
    assert rows(db, "SELECT notification_id, state, attempts FROM delivery_state ORDER BY notification_id") == [
        (first.id, "delivered", 1), (second.id, "pending", 1),
    ]  # fmt: skip
    assert rows(db, "SELECT status FROM deliveries ORDER BY id") == [("delivered",), ("retry",)]
