"""Every reader holds its read transaction only for its own statements, so none pins the WAL.

The proof for each: while the reader is still open (a ``tail`` between polls, an export between
chunks, the sidecar's connection between rounds), ``wal_checkpoint(TRUNCATE)`` from another
connection succeeds. It cannot while any connection holds a read transaction on the WAL.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent.config import AlertSettings, StoreSettings
from agent.events import iso, parse_event
from agent.store import Store, exports
from agent.store.exports import Job, snapshot
from agent.store.outbox import Outbox
from agent.store.readers import Tail, read_status, run_query


def truncate_succeeds(db: Path) -> bool:
    """A TRUNCATE checkpoint ran to the end: no reader holds a snapshot of the WAL."""
    conn = sqlite3.connect(db, timeout=0.2)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return bool(busy == 0 and db.with_name(db.name + "-wal").stat().st_size == 0)
    finally:
        conn.close()


def write_more(db: Path, n: int, start: int) -> None:
    """Commit more events through another connection, so the WAL has frames to checkpoint."""
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO events (event_id, app, kind, ts, payload, received_at) VALUES (?, 'demo', 'event', ?, '{}', ?)",
            [(f"x{i}", "2024-05-01T00:00:00.000Z", "2024-05-01T00:00:00.000Z") for i in range(start, start + n)],
        )
    conn.close()


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=path, flush_ms=2))
    ts = "2024-05-01T00:00:00.000Z"  # one ts for all: the export's paging must break the ties by id
    events = [parse_event({"id": f"e{i:03d}", "kind": "event", "app": "demo", "ts": ts}, '{"device_id":"d"}', 4096)
              for i in range(100)]  # fmt: skip
    store.submit_events(events, iso(time.time()))
    await store.barrier()
    await store.close()
    return path


def test_the_check_catches_a_reader_that_pins_the_wal(db: Path) -> None:
    """The control: a connection left inside a read transaction makes the TRUNCATE checkpoint fail."""
    reader = sqlite3.connect(db)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()
        write_more(db, 1, 500)
        assert not truncate_succeeds(db)
        reader.rollback()
        assert truncate_succeeds(db)
    finally:
        reader.close()


def test_tail_status_and_query_release_the_wal_between_calls(db: Path) -> None:
    """tail between polls, status and query after their call: a TRUNCATE checkpoint goes through."""
    tail = Tail(db, api=False)
    tail.start(5)
    assert len(tail.poll()) == 5
    write_more(db, 10, 0)
    assert truncate_succeeds(db)
    assert len(tail.poll()) == 10
    assert read_status(db)["rows"]["events"] == 110
    assert run_query(db, "SELECT count(*) FROM events", 10)[1] == [(110,)]
    write_more(db, 1, 10)
    assert truncate_succeeds(db)


def test_export_reads_each_chunk_in_its_own_transaction(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between chunks of an export the WAL can be truncated; rows sharing a ts come once each, in order."""
    monkeypatch.setattr(exports, "CHUNK", 7)
    job = Job(1, "history", "event", "2024-01-01T00:00:00.000Z", "2025-01-01T00:00:00.000Z", "jsonl", "/tmp", "queued")
    seen: list[str] = []
    with snapshot(db, job) as (columns, _, chunks):
        for n, chunk in enumerate(chunks):
            assert len(chunk) <= 7
            seen.extend(row[columns.index("event_id")] for row in chunk)
            if n == 3:
                write_more(db, 5, 100)  # committed ahead of the export's position: included
                assert truncate_succeeds(db)
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 105


def test_snapshot_export_pages_by_primary_key(tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state-table snapshot pages on its primary key: every row once, across chunk boundaries."""
    monkeypatch.setattr(exports, "CHUNK", 3)
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO tags (app, device_id, name, value, ts, event_id, received_at) VALUES (?, ?, ?, '1', 't', 'e', 'r')",
            [(app, f"d{d}", name) for app in ("a", "b") for d in range(3) for name in ("x", "y")],
        )
    conn.close()
    job = Job(2, "snapshot", "tag", None, None, "jsonl", "/tmp", "queued")
    with snapshot(db, job) as (_, _, chunks):
        keys = [tuple(row[:3]) for chunk in chunks for row in chunk]
    assert keys == sorted(keys) and len(set(keys)) == len(keys) == 12


async def test_sidecar_connection_releases_the_wal_between_rounds(db: Path) -> None:
    """The sidecar's connection, kept open, holds no read transaction after its reads."""
    outbox = await Outbox.open(db, AlertSettings())
    try:
        await outbox.sync({"webhook": "ordered"})  # int: each sink with its delivery order
        assert await outbox.due("webhook") == []
        await outbox.heartbeat()
        write_more(db, 3, 200)
        assert truncate_succeeds(db)
    finally:
        await outbox.close()
