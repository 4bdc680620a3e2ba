"""Schema drift through the writer, on a real SQLite file: stored as received, counted, recorded and alerted once."""

from __future__ import annotations

from pathlib import Path

import orjson

from agent.config import StoreSettings
from agent.events import Event, parse_event
from agent.store import Store, connect_readonly
from agent.store.drift import MAX_VALUES

TS = "2026-11-22T10:00:00.000Z"


def event(n: int, kind: str, payload: dict[str, object], ts: str = TS) -> Event:
    return parse_event({"id": f"e-{n}", "kind": kind, "app": "demo", "ts": ts}, orjson.dumps(payload).decode(), 65536)


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = connect_readonly(db)
    try:
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


async def test_unknown_push_action_is_stored_counted_and_alerted_once(tmp_path: Path) -> None:
    """'clicked' lands in push_feedback; the counter counts every event; one alert and one
    notification per new value, none for a known one, across batches and a reopened store."""
    db = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=db, flush_ms=5))
    push = {"device_id": "d1", "campaign_id": "c1", "action": "clicked"}
    store.submit_events([event(1, "push", push), event(2, "push", push | {"device_id": "d2"})], "r1")
    await store.barrier()
    store.submit_events([event(3, "push", push | {"device_id": "d3"})], "r2")
    store.submit_events([event(4, "push", push | {"device_id": "d4", "action": "exited"})], "r2")
    await store.barrier()
    await store.close()
    store = await Store.open(StoreSettings(path=db, flush_ms=5))
    store.submit_events(
        [event(5, "push", push | {"device_id": "d5"}), event(6, "push", push | {"action": "tapped"})], "r3"
    )
    await store.barrier()
    await store.close()

    assert rows(db, "SELECT device_id, action FROM push_feedback ORDER BY device_id") == [
        ("d1", "tapped"), ("d2", "clicked"), ("d3", "clicked"), ("d4", "exited"), ("d5", "clicked")]  # fmt: skip
    assert rows(db, "SELECT value FROM counters WHERE name = 'schema_drift:push.action'") == [(5,)]
    assert rows(db, "SELECT kind, field, value, event_id, count FROM schema_drift ORDER BY value") == [
        ("push", "action", "clicked", "e-1", 4), ("push", "action", "tapped", "e-6", 1)]  # fmt: skip
    assert rows(db, "SELECT source, app, code, api, class, severity, state, count FROM alerts ORDER BY api") == [
        ("schema", "demo", "schema_drift", "push.action=clicked", "drift", "warning", "firing", 1),
        ("schema", "demo", "schema_drift", "push.action=tapped", "drift", "warning", "firing", 1),
    ]
    assert rows(db, "SELECT transition, count(*) FROM notifications GROUP BY transition") == [("firing", 2)]
    assert rows(db, "SELECT count(*) FROM quarantine") == [(0,)]
    assert rows(db, "SELECT value FROM counters WHERE name = 'events_received'") == [(6,)]


async def test_tags_map_upserts_one_row_per_name(tmp_path: Path) -> None:
    """A tag event with a tags map writes a row per tag name; a newer map updates them, an older one does not."""
    db = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=db, flush_ms=5))
    store.submit_events([event(1, "tag", {"device_id": "d1", "tags": {"plan": "gold", "tier": "2"}})], "r")
    store.submit_events([event(2, "tag", {"device_id": "d1", "name": "beta", "value": True,
                                          "tags": {"plan": "silver"}}, ts="2026-11-22T11:00:00.000Z")], "r")  # fmt: skip
    store.submit_events(
        [event(3, "tag", {"device_id": "d1", "tags": {"tier": "9"}}, ts="2026-11-22T09:00:00.000Z")], "r"
    )
    store.submit_events([event(4, "tag", {"device_id": "d2", "tags": {"prefs": {"dark": True}}})], "r")
    await store.barrier()
    await store.close()
    assert rows(db, "SELECT device_id, name, value, event_id FROM tags ORDER BY device_id, name") == [
        ("d1", "beta", "true", "e-2"), ("d1", "plan", '"silver"', "e-2"), ("d1", "tier", '"2"', "e-1"),
        ("d2", "prefs", '{"dark":true}', "e-4"),
    ]  # fmt: skip
    assert rows(db, "SELECT value FROM counters WHERE name = 'schema_drift:tag.value'") == [(1,)]
    assert rows(db, "SELECT value, count FROM schema_drift") == [("object", 1)]


async def test_distinct_values_are_capped(tmp_path: Path) -> None:
    """An upstream that puts ids into an enumerated field records and alerts at most MAX_VALUES values; all are counted."""
    db = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=db, flush_ms=5))
    n = MAX_VALUES + 20
    store.submit_events(
        [event(i, "push", {"device_id": f"d{i}", "campaign_id": "c", "action": f"a{i}"}) for i in range(n)], "r"
    )
    await store.barrier()
    await store.close()
    assert rows(db, "SELECT count(*) FROM schema_drift") == [(MAX_VALUES,)]
    assert rows(db, "SELECT count(*) FROM alerts WHERE code = 'schema_drift'") == [(MAX_VALUES,)]
    assert rows(db, "SELECT value FROM counters WHERE name = 'schema_drift:push.action'") == [(n,)]
    assert rows(db, "SELECT count(*) FROM push_feedback") == [(n,)]
