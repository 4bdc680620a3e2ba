"""Retention beside the NATS forwarder: what the forwarder has not sent stays; state_changes is pruned by age.

int's forwarder reads events, api_calls, state_changes and notifications by id above its
``forward_cursor``; retention ANDs ``agent.store.changes.retention_guard`` into every prune.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from agent.events import iso

from ..conftest import db_rows_of
from .test_retention import DAY, event, open_store, run_pass, value


def set_cursor(db: Path, **last_ids: int) -> None:
    conn = sqlite3.connect(db, timeout=30)
    try:
        for source, last_id in last_ids.items():
            conn.execute(
                "INSERT INTO forward_cursor (source, last_id, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (source) DO UPDATE SET last_id = excluded.last_id",
                (source, last_id, iso(time.time())),
            )
        conn.commit()
    finally:
        conn.close()


def kept(db: Path, table: str) -> set[str]:
    return {r[0] for r in db_rows_of(db, f"SELECT event_id FROM {table}")}


async def test_prune_keeps_what_the_forwarder_has_not_sent(tmp_path: Path) -> None:
    """Aged rows above the forward cursor stay until it passes them; aged state changes go like history."""
    db, now = tmp_path / "m.db", time.time()
    store = await open_store(db, history_days=30, quarantine_days=0, deliveries_days=0)
    try:
        old = now - 30 * DAY + 1.5
        aging = [event(n, old) for n in range(1, 6)] + [event(n, old, "api") for n in range(11, 16)]
        store.submit_events([*aging, event(21, old, "device"), event(22, old, "device")], iso(old))
        await store.barrier()
        store.submit_events([event(31, now), event(41, now, "api"), event(51, now, "device")], iso(now))
        await store.barrier()
        assert [r[0] for r in db_rows_of(db, "SELECT event_id FROM state_changes ORDER BY id")] == [
            "e-21",
            "e-22",
            "e-51",
        ]
        # The forwarder has sent events 1..3 and state change 1; api_calls were never forwarded (no cursor).
        set_cursor(db, events=3, state_changes=1)
        await asyncio.sleep(2.6)  # the aging rows pass the 30-day limit
        first = await run_pass(store)
        after_first = {t: kept(db, t) for t in ("events", "api_calls", "state_changes")}
        set_cursor(db, events=6, state_changes=3)
        second = await run_pass(store)
    finally:
        await store.close()
    assert (first["history"], first["state_changes"]) == (8, 1)
    assert after_first == {"events": {"e-4", "e-5", "e-31"}, "api_calls": {"e-41"}, "state_changes": {"e-22", "e-51"}}
    assert (second["history"], second["state_changes"]) == (2, 1)
    assert kept(db, "events") == {"e-31"} and kept(db, "api_calls") == {"e-41"}
    assert kept(db, "state_changes") == {"e-51"}
    # The state tables themselves are never pruned; nothing else was touched.
    assert value(db, "SELECT count(*) FROM devices") == 3
    assert value(db, "SELECT count(*) FROM quarantine") == 0
    assert value(db, "SELECT count(*) FROM notifications") == 0
    assert value(db, "SELECT count(*) FROM forward_cursor") == 2
