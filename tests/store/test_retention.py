"""Retention, free space and checkpoints in the writer, on real SQLite files (the store in this process).

The real agent process is exercised in test_retention_agent.py; these pin down the rules one by
one: what is dropped on arrival, what a pass deletes and keeps, what it never touches.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import StoreSettings, load_settings
from agent.config.retention import RetentionSettings
from agent.events import Event, iso, parse_event
from agent.exceptions import ConfigError
from agent.store import Quarantined, Store

from ..conftest import db_rows_of

DAY = 86_400.0
PAYLOADS = {
    "activity": '{"device_id":"d-%d","pad":"%s"}',
    "api": '{"api":"reach","status":200,"pad":"%s"}',
    "device": '{"device_id":"d-%d","model":"m"}',
}


def event(n: int, ts: float, kind: str = "activity", pad: int = 0) -> Event:
    text = PAYLOADS[kind].replace("%d", str(n)).replace("%s", "x" * pad)
    return parse_event({"id": f"e-{n}", "kind": kind, "app": "demo", "ts": iso(ts)}, text, 1 << 20)


def value(db: Path, sql: str, *params: Any) -> Any:
    found = db_rows_of(db, sql, *params)
    return found[0][0] if found else None


def counter(db: Path, name: str) -> int:
    return int(value(db, "SELECT value FROM counters WHERE name = ?", name) or 0)


async def until(predicate: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.02)


async def open_store(db: Path, **retention: Any) -> Store:
    store = await Store.open(StoreSettings(path=db, flush_ms=2))
    if retention:
        store.upkeep.retain(RetentionSettings(**{"interval": 3600, **retention}), first_pass_after=3600)
    return store


async def run_pass(store: Store) -> dict[str, int]:
    """Start a pass now and wait for it to finish; return what it did."""
    done = store.upkeep.passes
    store.upkeep._next_pass = 0.0  # due now
    store._wake.set()
    await until(lambda: store.upkeep.passes > done, what="a prune pass")
    return store.upkeep.last_pass


def test_settings_have_the_issue_names_and_refuse_negatives(monkeypatch: pytest.MonkeyPatch) -> None:
    """XMPPMON_RETENTION__* and XMPPMON_STORE__MIN_FREE_MB load with their defaults; a bad value is one line."""
    settings = load_settings(None)
    assert (settings.retention.history_days, settings.retention.quarantine_days) == (30, 30)
    assert (settings.retention.deliveries_days, settings.retention.interval) == (14, 300)
    assert settings.store.min_free_mb == 512
    for name, raw in (("HISTORY_DAYS", "2"), ("QUARANTINE_DAYS", "0"), ("DELIVERIES_DAYS", "7"), ("INTERVAL", "60")):
        monkeypatch.setenv(f"XMPPMON_RETENTION__{name}", raw)
    monkeypatch.setenv("XMPPMON_STORE__MIN_FREE_MB", "64")
    settings = load_settings(None)
    assert settings.retention.model_dump() == {
        "history_days": 2, "quarantine_days": 0, "deliveries_days": 7, "interval": 60,
    }  # fmt: skip
    assert settings.store.min_free_mb == 64
    monkeypatch.setenv("XMPPMON_RETENTION__HISTORY_DAYS", "-1")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert "XMPPMON_RETENTION__HISTORY_DAYS" in str(caught.value) and "\n" not in str(caught.value)


async def test_old_arrivals_are_dropped_and_counted_state_kept(tmp_path: Path, captured_logs: list[str]) -> None:
    """History and api events older than the cutoff are not stored but counted; state events and fresh ones are."""
    db, now = tmp_path / "m.db", time.time()
    store = await open_store(db, history_days=30)
    try:
        store.submit_events([event(1, now - 40 * DAY), event(2, now), event(3, now - 40 * DAY, "api"),
                             event(4, now - 40 * DAY, "device"), event(5, now - 29 * DAY)], iso(now))  # fmt: skip
        store.submit_events([event(6, now - 31 * DAY)], iso(now))
        await store.barrier()
    finally:
        await store.close()
    assert [r[0] for r in db_rows_of(db, "SELECT event_id FROM events ORDER BY event_id")] == ["e-2", "e-5"]
    assert value(db, "SELECT count(*) FROM api_calls") == 0
    assert value(db, "SELECT count(*) FROM devices") == 1  # current values are not judged by age
    assert value(db, "SELECT count(*) FROM quarantine") == 0
    assert counter(db, "events_expired") == 3
    assert counter(db, "events_received") == 6 and counter(db, "events_duplicate") == 0
    lines = [line for line in captured_logs if "older than the history retention" in line]
    assert len(lines) == 1 and "2 event(s)" in lines[0], lines  # at most once a minute: the second wave waits


async def test_zero_days_keeps_everything(tmp_path: Path) -> None:
    """0 keeps a table forever: nothing is dropped on arrival and a pass deletes nothing."""
    db, now = tmp_path / "m.db", time.time()
    store = await open_store(db, history_days=0, quarantine_days=0, deliveries_days=0)
    try:
        store.submit_events([event(1, now - 4000 * DAY), event(2, now - 4000 * DAY, "api")], iso(now))
        store.submit_quarantine(Quarantined("bad", "<event/>", None, None, None, iso(now - 4000 * DAY)))
        await store.barrier()
        assert not any((await run_pass(store)).values())
    finally:
        await store.close()
    assert value(db, "SELECT count(*) FROM events") + value(db, "SELECT count(*) FROM api_calls") == 2
    assert value(db, "SELECT count(*) FROM quarantine") == 1
    assert counter(db, "events_expired") == 0


async def test_pass_prunes_aged_rows_and_keeps_the_rest(tmp_path: Path) -> None:
    """A pass deletes history, api calls and quarantine past their limits; fresh rows and state tables stay."""
    db, now = tmp_path / "m.db", time.time()
    store = await open_store(db, history_days=30, quarantine_days=10)
    try:
        fresh = [event(n, now - 5, "activity" if n % 2 else "api") for n in range(1, 201)]
        aging = [event(n, now - 30 * DAY + 1.5, "activity" if n % 2 else "api") for n in range(1001, 1301)]
        # Aging first: retention always keeps the newest row of a table (agent.store.changes.retention_guard).
        store.submit_events([*aging, *fresh, event(9, now - 30 * DAY + 1.5, "device")], iso(now))
        for n, age in enumerate((11 * DAY, 11 * DAY, 1 * DAY)):
            store.submit_quarantine(Quarantined("bad", f"<event n='{n}'/>", None, None, None, iso(now - age)))
        await store.barrier()
        assert value(db, "SELECT count(*) FROM events") + value(db, "SELECT count(*) FROM api_calls") == 500
        await asyncio.sleep(2.6)  # the aging rows pass the 30-day limit
        done = await run_pass(store)
    finally:
        await store.close()
    assert done["history"] == 300 and done["quarantine"] == 2
    kept = {r[0] for r in db_rows_of(db, "SELECT event_id FROM events UNION ALL SELECT event_id FROM api_calls")}
    assert kept == {f"e-{n}" for n in range(1, 201)}
    assert value(db, "SELECT count(*) FROM devices") == 1
    assert [r[0] for r in db_rows_of(db, "SELECT raw FROM quarantine")] == ["<event n='2'/>"]


async def test_redelivery_inside_the_window_is_absorbed_after_a_pass(tmp_path: Path) -> None:
    """After a pass, a redelivered fresh event is still a duplicate, and a redelivered pruned one is not let back in."""
    db, now = tmp_path / "m.db", time.time()
    store = await open_store(db, history_days=1)
    try:
        young, aging = event(1, now - 60), event(2, now - DAY + 1.5)
        store.submit_events([aging, young], iso(now))  # the newest row always stays: aging first
        await store.barrier()
        await asyncio.sleep(2.6)
        assert (await run_pass(store))["history"] == 1
        store.submit_events([young, aging], iso(time.time()))
        await store.barrier()
    finally:
        await store.close()
    assert [r[0] for r in db_rows_of(db, "SELECT event_id FROM events")] == ["e-1"]
    assert counter(db, "events_duplicate") == 1 and counter(db, "events_expired") == 1


async def test_history_cutoff_never_moves_back(tmp_path: Path) -> None:
    """The shared cutoff only moves forward, even if the clock steps back: a pruned row stays out."""
    store = await open_store(tmp_path / "m.db", history_days=1)
    clock = [time.time()]
    store.upkeep.clock = lambda: clock[0]
    try:
        first = store.upkeep.history_cutoff()
        clock[0] -= 3600
        store.upkeep._cutoff_at = -1e9  # force a refresh
        assert store.upkeep.history_cutoff() == first
    finally:
        await store.close()


async def _notification_db(db: Path, sinks: dict[str, int], pending: set[int], days_old: float) -> None:
    """Five notifications of one alert (ids 1..5), ``days_old`` old; each sink's cursor and pending ids.

    The alert is the sidecar's (the agent's rules leave it alone: they would quiet-resolve it).
    """
    conn = sqlite3.connect(db)
    created = iso(time.time() - days_old * DAY)
    conn.execute(
        "INSERT INTO alerts (id, source, app, code, api, class, severity, state, count, first_seen, last_seen,"
        " window_start, window_count) VALUES (1, 'sidecar', '', 'agent_down', '', 'relay', 'critical', 'firing',"
        " 1, ?1, ?1, ?1, 1)",
        (created,),
    )
    for n in range(1, 6):
        conn.execute("INSERT INTO notifications (id, key, alert_id, transition, alert, created_at)"
                     " VALUES (?, ?, 1, 'firing', '{}', ?)", (n, f"k{n}", created))  # fmt: skip
        for sink, last in sinks.items():
            if n <= last:
                state = "pending" if n in pending else "delivered"
                conn.execute("INSERT INTO delivery_state VALUES (?, ?, ?, 1, ?, NULL, ?, 1)",
                             (sink, n, state, created, created))  # fmt: skip
                conn.execute("INSERT INTO deliveries (sink, notification_id, attempt, status, started_at,"
                             " finished_at) VALUES (?, ?, 1, ?, ?, ?)", (sink, n, state, created, created))  # fmt: skip
    for sink, last in sinks.items():
        conn.execute("INSERT INTO sink_cursor VALUES (?, ?, NULL, ?)", (sink, last, created))
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("sinks", "configured", "pending", "gone"),
    [
        ({"webhook": 5}, [], set(), {1, 2, 3, 4}),  # the newest of the alert stays
        ({"webhook": 5}, [], {2}, {1, 3, 4}),  # never a pending one
        ({"webhook": 5, "am": 3}, [], set(), {1, 2, 3}),  # every sink must have taken it
        ({"webhook": 5}, ["webhook", "pager"], set(), set()),  # a configured sink not seen yet holds all
    ],
)
async def test_notifications_go_once_every_sink_is_done(
    tmp_path: Path, sinks: dict[str, int], configured: list[str], pending: set[int], gone: set[int]
) -> None:
    """Notifications past DELIVERIES_DAYS go with their delivery rows only once every sink is done with them."""
    db = tmp_path / "m.db"
    await (await open_store(db)).close()
    await _notification_db(db, sinks, pending, days_old=20)
    store = await Store.open(StoreSettings(path=db, flush_ms=2))
    store.upkeep.retain(RetentionSettings(deliveries_days=14, interval=3600), sinks=configured, first_pass_after=3600)
    try:
        await run_pass(store)
    finally:
        await store.close()
    left = {r[0] for r in db_rows_of(db, "SELECT id FROM notifications")}
    assert left == {1, 2, 3, 4, 5} - gone
    assert {r[0] for r in db_rows_of(db, "SELECT notification_id FROM deliveries")} <= left
    assert {r[0] for r in db_rows_of(db, "SELECT notification_id FROM delivery_state")} <= left
    assert value(db, "SELECT count(*) FROM alerts") == 1


async def test_new_database_is_incremental_and_a_pass_returns_pages(tmp_path: Path) -> None:
    """A new file has auto_vacuum=INCREMENTAL; after a pass the freed pages go back and the file shrinks."""
    db, now = tmp_path / "m.db", time.time()
    store = await open_store(db, history_days=1)
    try:
        assert value(db, "PRAGMA auto_vacuum") == 2
        for start in range(0, 4000, 500):
            store.submit_events([event(n, now - DAY + 1.5, pad=400) for n in range(start, start + 500)], iso(now))
        store.submit_events([event(99_999, now)], iso(now))
        await store.barrier()
        pages_before = value(db, "PRAGMA page_count")
        await asyncio.sleep(2.6)
        done = await run_pass(store)
    finally:
        await store.close()
    assert done["history"] == 4000 and done["pages"] > 300
    assert value(db, "PRAGMA freelist_count") == 0
    assert value(db, "PRAGMA page_count") <= pages_before - done["pages"] + 5  # the pass writes a few itself
    assert value(db, "PRAGMA integrity_check") == "ok"


async def test_disk_low_fires_and_resolves(tmp_path: Path) -> None:
    """Free space under min_free_mb raises disk_low (a notification) and its return resolves it."""
    db = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=db, flush_ms=2, min_free_mb=10**9))  # more than any disk
    try:
        await until(lambda: value(db, "SELECT state FROM alerts WHERE code = 'disk_low'") == "firing")
        store.upkeep.min_free = 1  # space is back
        await until(lambda: value(db, "SELECT state FROM alerts WHERE code = 'disk_low'") == "resolved")
    finally:
        await store.close()
    found = db_rows_of(db, "SELECT source, app, api, severity FROM alerts WHERE code = 'disk_low'")
    assert found == [("store", "", "disk", "warning")]
    transitions = [r[0] for r in db_rows_of(db, "SELECT transition FROM notifications ORDER BY id")]
    assert transitions == ["firing", "resolved"]
    assert "XMPPMON_STORE__MIN_FREE_MB" in value(db, "SELECT detail FROM alerts WHERE code = 'disk_low'")
