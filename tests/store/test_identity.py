"""Replays absorbed by identity: an event id is stored once whatever its ts, a bad event is quarantined once."""

from __future__ import annotations

from pathlib import Path

from agent.config import StoreSettings
from agent.store import Quarantined, Store, connect_readonly

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
