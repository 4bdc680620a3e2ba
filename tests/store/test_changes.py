"""The forwarding change log in SQLite: state changes recorded in the upsert's transaction, the cursor, the retention guard."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import orjson

from agent.config import load_settings
from agent.events import parse_event
from agent.lab.emulator.wire import utc_ts
from agent.store import Store
from agent.store.changes import ChangeLog, Dead, forward_status, retention_guard


def event(i: int, kind: str, payload: dict[str, object], ts: str) -> object:
    return parse_event({"id": f"e-{i}", "kind": kind, "app": "demo", "ts": ts}, orjson.dumps(payload).decode(), 65536)


async def write(db: Path, events: list[object]) -> None:
    store = await Store.open(load_settings(None, store={"path": str(db)}).store)
    store.submit_events(events, utc_ts(time.time()))  # type: ignore[arg-type]
    await store.barrier()
    await store.close()


async def test_state_changes_record_each_effective_upsert_only(tmp_path: Path) -> None:
    """Every applied upsert of a state table is a state_changes row with the new values; a stale one (older ts) is not."""
    db = tmp_path / "m.db"
    await write(db, [
        event(1, "tag", {"device_id": "d-1", "name": "plan", "value": "free"}, "2026-01-01T00:00:01.000Z"),
        event(2, "tag", {"device_id": "d-1", "name": "plan", "value": "pro"}, "2026-01-01T00:00:03.000Z"),
        event(3, "tag", {"device_id": "d-1", "name": "plan", "value": "old"}, "2026-01-01T00:00:02.000Z"),
        event(4, "device", {"device_id": "d-1", "model": "X"}, "2026-01-01T00:00:01.000Z"),
        event(5, "token", {"device_id": "d-1", "token": "t", "valid": False}, "2026-01-01T00:00:01.000Z"),
        event(6, "push", {"device_id": "d-1", "campaign_id": "c", "action": "displayed"}, "2026-01-01T00:00:01.000Z"),
        event(7, "activity", {"device_id": "d-1", "name": "Home"}, "2026-01-01T00:00:01.000Z"),
    ])  # fmt: skip
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT kind, event_id, state FROM state_changes ORDER BY id").fetchall()
    assert [(k, e) for k, e, _ in rows] == [
        ("tag", "e-1"),
        ("tag", "e-2"),
        ("device", "e-4"),
        ("token", "e-5"),
        ("push", "e-6"),
    ]
    states = [orjson.loads(s) for _, _, s in rows]
    assert states[1] == {"device_id": "d-1", "name": "plan", "value": "pro"}
    assert states[2] == {"device_id": "d-1", "payload": {"device_id": "d-1", "model": "X"}}
    assert states[3] == {"device_id": "d-1", "token": "t", "valid": False}
    assert conn.execute("SELECT value FROM tags").fetchone()[0] == '"pro"'


async def test_retention_guard_keeps_unforwarded_rows_and_the_newest(tmp_path: Path) -> None:
    """Retention ANDing retention_guard deletes only rows at or below the cursor, never the newest rowid."""
    db = tmp_path / "m.db"
    ts = "2026-01-01T00:00:01.000Z"
    await write(db, [event(i, "activity", {"device_id": "d"}, ts) for i in range(10)]
                + [event(100 + i, "tag", {"device_id": "d", "name": f"n{i}", "value": i}, ts) for i in range(4)])  # fmt: skip
    conn = sqlite3.connect(db, isolation_level=None)
    # No forwarder has ever run: everything but the newest event may go; every state change may go.
    assert conn.execute(f"SELECT count(*) FROM events WHERE {retention_guard('events')}").fetchone()[0] == 9
    assert (
        conn.execute(f"SELECT count(*) FROM state_changes WHERE {retention_guard('state_changes')}").fetchone()[0] == 4
    )
    log = await ChangeLog.open(db)
    await log.save((4, 0, 2, 0), [], {}, range(3))
    await log.close()
    conn.execute(f"DELETE FROM events WHERE {retention_guard('events')}")
    conn.execute(f"DELETE FROM state_changes WHERE {retention_guard('state_changes')}")
    assert [r[0] for r in conn.execute("SELECT id FROM events")] == [5, 6, 7, 8, 9, 10]
    assert [r[0] for r in conn.execute("SELECT id FROM state_changes")] == [3, 4]
    log = await ChangeLog.open(db)
    await log.save((10, 0, 4, 0), [], {}, range(3))
    await log.close()
    conn.execute(f"DELETE FROM events WHERE {retention_guard('events')}")
    assert [r[0] for r in conn.execute("SELECT id FROM events")] == [10]  # so the next row is 11, above the cursor


async def test_change_log_reads_in_order_and_saves_progress_atomically(tmp_path: Path) -> None:
    """read() returns each source above the position in id order; save() writes cursor, dead letters and status together."""
    db = tmp_path / "m.db"
    ts = "2026-01-01T00:00:01.000Z"
    await write(db, [event(i, "activity", {"device_id": "d"}, ts) for i in range(5)]
                + [event(50, "api", {"api": "reach", "status": 200}, ts)])  # fmt: skip
    log = await ChangeLog.open(db)
    try:
        records = await log.read((2, 0, 0, 0), range(3), 100)
        assert [(r.source, r.id, r.kind) for r in records] == [
            (0, 3, "activity"),
            (0, 4, "activity"),
            (0, 5, "activity"),
            (1, 1, "api"),
        ]
        lag, pending = await log.waiting((2, 0, 0, 0), range(3))
        assert pending == 4 and lag > 0
        status = {"lag_seconds": 0.5, "state": "forwarding"}
        await log.save((5, 1, 0, 7), [Dead(0, 4, "s", 10, "too large", "{}")], status, range(3))
        assert await log.cursor() == (5, 1, 0, 0)  # notifications not forwarded: no cursor row holds them back
        assert await log.behind((5, 1, 0, 0), range(3)) == []
        assert await log.behind((6, 2, 9, 0), range(3)) == ["events", "api_calls"]
        assert await log.dead_above((3, 0, 0, 0)) == {(0, 4)}
        assert await log.waiting((5, 1, 0, 0), range(3)) == (0.0, 0)
    finally:
        await log.close()
    status = forward_status(sqlite3.connect(db))
    assert status is not None and status["lag_seconds"] == 0.5 and status["dead_letters"] == 1
    assert status["state"] == "forwarding"
