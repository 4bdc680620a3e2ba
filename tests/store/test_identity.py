"""Replays absorbed by identity: an event id is stored once whatever its ts, a bad event is quarantined once."""

from __future__ import annotations

import sqlite3
import tracemalloc
from pathlib import Path

import aiosqlite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import StoreSettings
from agent.store import Quarantined, Store, connect_readonly
from agent.store.identity import Identity

from .test_writer import make_event


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = connect_readonly(path)
    try:
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def _counters(path: Path) -> dict[object, object]:
    return dict(_rows(path, "SELECT name, value FROM counters"))


async def test_the_same_id_with_another_ts_is_one_row(tmp_path: Path) -> None:
    """The Monitor API's id is the identity: a redelivery with a different ts adds no second row (history and api)."""
    path = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=path, flush_ms=1))
    store.submit_events([make_event(1), make_event(2, "api")], "r")
    await store.barrier()
    store.submit_events(
        [make_event(1, ts="2026-11-22T10:00:05.000Z"), make_event(2, "api", ts="2026-11-22T11:00:00.000Z")], "r"
    )
    # ...and twice in one batch.
    store.submit_events([make_event(3), make_event(3, ts="2026-11-22T10:00:09.000Z")], "r")
    await store.barrier()
    await store.close()
    assert _rows(path, "SELECT event_id, ts FROM events ORDER BY event_id") == [
        ("e-1", "2026-11-22T10:00:00.000Z"),
        ("e-3", "2026-11-22T10:00:00.000Z"),
    ]
    assert _rows(path, "SELECT event_id, ts FROM api_calls") == [("e-2", "2026-11-22T10:00:00.000Z")]
    assert _counters(path)["events_duplicate"] == 3


async def test_identity_survives_a_restart(tmp_path: Path) -> None:
    """A new process knows the ids already stored: the same id with another ts after a restart is absorbed too."""
    path = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=path, flush_ms=1))
    store.submit_events([make_event(n) for n in range(50)], "r")
    await store.barrier()
    await store.close()
    store = await Store.open(StoreSettings(path=path, flush_ms=1))
    store.submit_events([make_event(n, ts="2026-11-23T00:00:00.000Z") for n in range(50)], "r")
    store.submit_events([make_event(50)], "r")
    await store.barrier()
    await store.close()
    assert _rows(path, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(51, 51)]


async def test_a_replayed_malformed_event_is_quarantined_once(tmp_path: Path) -> None:
    """The same bad event delivered again (offline, archive, resume) gives one quarantine row; counters say which."""
    path = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=path, flush_ms=1))
    bad = Quarantined("bad JSON", "<event id='x'>{</event>", "monitor.localhost", "x", "demo", "r1")
    other = Quarantined("bad JSON", "<event id='y'>{</event>", "monitor.localhost", "y", "demo", "r1")
    store.submit_quarantine(bad)
    await store.barrier()
    store.submit_quarantine(Quarantined(bad.reason, bad.raw, bad.sender, bad.event_id, bad.app, "r2"))
    store.submit_quarantine(other)
    await store.barrier()
    await store.close()
    assert _rows(path, "SELECT event_id FROM quarantine ORDER BY event_id") == [("x",), ("y",)]
    counters = _counters(path)
    assert counters["quarantined"] == 2
    assert counters["quarantine_replays"] == 1


async def test_the_newest_window_ids_are_recognised(tmp_path: Path) -> None:
    """With a window of 32 ids, the 32 newest are absorbed when re-stamped, the older ones are not (forgotten)."""
    path = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=path, flush_ms=1, identity_window=32))
    for n in range(100):  # one commit each: the index freezes and forgets blocks as it goes
        store.submit_events([make_event(n)], "r")
        await store.barrier()
    store.submit_events([make_event(n, ts="2026-11-23T00:00:00.000Z") for n in range(100)], "r")
    await store.barrier()
    await store.close()
    again = _rows(path, "SELECT event_id FROM events WHERE ts = '2026-11-23T00:00:00.000Z'")
    assert sorted(int(str(r[0])[2:]) for r in again) == list(range(68))
    assert _counters(path)["events_duplicate"] == 32


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    commits=st.lists(
        st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["t1", "t2", "t3"])), min_size=1, max_size=6),
        min_size=1, max_size=25,
    ),
    window=st.integers(2, 20),
    failed=st.sets(st.integers(0, 24)),
)  # fmt: skip
async def test_identity_against_a_model(
    tmp_path: Path, commits: list[list[tuple[int, str]]], window: int, failed: set[int]
) -> None:
    """Against a plain model: an id among the ``window`` newest stored is dropped when re-stamped, an id
    never stored is kept, and a transaction that rolls back leaves nothing behind."""
    async with aiosqlite.connect(":memory:") as conn:  # closed also when an assertion fails
        await _check_against_model(conn, commits, window, failed)


async def _check_against_model(
    conn: aiosqlite.Connection, commits: list[list[tuple[int, str]]], window: int, failed: set[int]
) -> None:
    await conn.execute("CREATE TABLE events (event_id TEXT, ts TEXT, UNIQUE (ts, event_id))")
    identity = Identity(window)
    stored: dict[str, str] = {}  # id -> ts of its row (of its last row, for an id stored again once forgotten)
    learned: list[str] = []  # ids in the order the index learned them (kept while it did not know them)
    for number, rows in enumerate(commits):
        batch = [(f"e-{n}", ts) for n, ts in rows]
        identity.begin()  # as write_batch does: a transaction starts
        unknown = {event_id for event_id, _ in batch if identity.stored_ts(event_id) is None}
        newest = set(learned[-window:])
        kept, _ = await identity.split(conn, batch, "events", 0, 1)
        for event_id, ts in batch:
            if event_id in newest:
                assert identity.stored_ts(event_id) == stored[event_id], (event_id, learned)
                if stored[event_id] != ts:
                    assert (event_id, ts) not in kept, (event_id, learned)
            if event_id not in stored and (event_id, ts) == next(r for r in batch if r[0] == event_id):
                assert (event_id, ts) in kept
        if number in failed:  # rolled back: what it staged must not be known
            continue
        await conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?)", kept)
        identity.committed()
        for event_id, ts in kept:
            if event_id in unknown:
                unknown.discard(event_id)
                learned.append(event_id)
                stored[event_id] = ts
        assert len(identity) >= min(window, len(learned))


def _table_of_ids(path: Path, count: int) -> None:
    conn = sqlite3.connect(path)
    for table in ("events", "api_calls"):
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, event_id TEXT, ts TEXT)")
    conn.executemany("INSERT INTO events (event_id, ts) VALUES (?, ?)",
                     ((f"e-{n:08d}-0b9d2a4c", f"2026-11-22T10:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}.{n % 1000:03d}Z")
                      for n in range(count)))  # fmt: skip
    conn.commit()
    conn.close()


async def test_filling_the_index_at_start_streams_the_rows(tmp_path: Path) -> None:
    """At start the index is filled from the tables a chunk at a time, not from every row read at
    once: that list (up to twice the window) took a restarted agent of the 60-minute soak to 293 MB.
    (400,000 rows: 136 MB above what the index holds when read at once, 26 MB now.)"""
    path = tmp_path / "m.db"
    _table_of_ids(path, 400_000)
    identity = Identity(1_000_000)
    async with aiosqlite.connect(path) as conn:
        tracemalloc.start()
        try:
            await identity.attach(conn)
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(identity) == 400_000
    assert peak - held < 48 * 2**20, f"peak {peak / 2**20:.0f} MB for {held / 2**20:.0f} MB held"


async def test_the_index_filled_at_start_holds_the_newest_ids(tmp_path: Path) -> None:
    """With more rows than the window, the newest ones are those the index knows after a start."""
    path = tmp_path / "m.db"
    _table_of_ids(path, 300)
    identity = Identity(64)
    async with aiosqlite.connect(path) as conn:
        await identity.attach(conn)
    assert all(identity.stored_ts(f"e-{n:08d}-0b9d2a4c") for n in range(236, 300))
    assert identity.stored_ts("e-00000000-0b9d2a4c") is None
