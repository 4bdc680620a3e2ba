"""The outbox's order per alert on a real database: migration 5 over existing sidecar work, supersession under
the 'latest' policy, and an attempt in flight when its notification was superseded."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from agent.config import AlertSettings
from agent.store.outbox import Attempt, Outbox
from agent.store.schema import MIGRATIONS

OLD = "2026-11-22T10:00:00.000Z"


def database_at_version_3(path: Path) -> None:
    """A database as xmppmon wrote it before migration 5, with a sink halfway through its work."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    for version, name, script in MIGRATIONS:
        if version <= 3:
            conn.executescript(script)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, OLD))
    alert = ("api", "shop", "401", "reach", "auth", "critical", "resolved", 1, OLD, OLD, OLD, 1)
    for app in ("shop", "cart"):
        conn.execute("INSERT INTO alerts (source, app, code, api, class, severity, state, count, first_seen, last_seen,"
                     " window_start, window_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (alert[0], app, *alert[2:]))  # fmt: skip
    # shop: firing (parked until far ahead), resolved; cart: firing delivered, resolved pending.
    for key, alert_id, transition in (("s1", 1, "firing"), ("c1", 2, "firing"), ("s2", 1, "resolved"),
                                      ("c2", 2, "resolved")):  # fmt: skip
        conn.execute("INSERT INTO notifications (key, alert_id, transition, alert, created_at) VALUES (?, ?, ?, ?, ?)",
                     (key, alert_id, transition, '{"app": "x"}', OLD))  # fmt: skip
    for nid, state, when in ((1, "pending", "2999-01-01T00:00:00.000Z"), (2, "delivered", OLD), (3, "pending", OLD),
                             (4, "pending", OLD)):  # fmt: skip
        conn.execute("INSERT INTO delivery_state (sink, notification_id, state, attempts, next_attempt_at, updated_at)"
                     " VALUES ('hook', ?, ?, 1, ?, ?)", (nid, state, when, OLD))  # fmt: skip
    conn.execute("INSERT INTO sink_cursor (sink, last_id, updated_at) VALUES ('hook', 4, ?)", (OLD,))
    conn.commit()
    conn.close()


async def test_migration_5_fills_the_alert_of_existing_rows_and_keeps_order(tmp_path: Path) -> None:
    """After the upgrade, shop's resolution waits behind its parked firing while cart's goes; nothing is lost."""
    path = tmp_path / "m.db"
    database_at_version_3(path)
    outbox = await Outbox.open(path, AlertSettings())
    try:
        assert await outbox.sync({"hook": "ordered"}) == 0  # an existing sink: nothing new, no snapshot
        due = [item.key for item in await outbox.due("hook")]
    finally:
        await outbox.close()
    assert due == ["c2"]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT notification_id, alert_id, state FROM delivery_state ORDER BY 1").fetchall() == [
        (1, 1, "pending"), (2, 2, "delivered"), (3, 1, "pending"), (4, 2, "pending")]  # fmt: skip
    assert conn.execute("SELECT count(*) FROM schema_migrations WHERE version = 5").fetchone()[0] == 1
    conn.close()


async def test_latest_supersedes_older_pending_and_a_failed_attempt_in_flight_stays_superseded(tmp_path: Path) -> None:
    """Under 'latest', a new notification of shop supersedes its two pending ones (reason names it); the parked one,
    had it been in flight, fails and stays superseded; a delivered one in flight ends delivered."""
    path = tmp_path / "m.db"
    database_at_version_3(path)
    outbox = await Outbox.open(path, AlertSettings())
    try:
        in_flight = {item.key: item for item in await outbox.due("hook", now=32_600_000_000)}  # s1 (parked) and c2
        conn = sqlite3.connect(path)
        conn.execute("INSERT INTO notifications (key, alert_id, transition, alert, created_at)"
                     " VALUES ('s3', 1, 'firing', '{}', ?)", (OLD,))  # fmt: skip
        conn.commit()
        assert await outbox.sync({"hook": "latest"}) == 1
        due = [item.key for item in await outbox.due("hook")]
        now = time.time()
        await outbox.record("hook", [Attempt(in_flight["s1"], "retry", now, now, "HTTP 503"),
                                     Attempt(in_flight["c2"], "delivered", now, now)], park_until=now + 30)  # fmt: skip
    finally:
        await outbox.close()
    assert due == ["c2", "s3"]
    rows = conn.execute("SELECT n.key, d.state, d.reason FROM delivery_state d JOIN notifications n"
                        " ON n.id = d.notification_id ORDER BY n.id").fetchall()  # fmt: skip
    conn.close()
    assert rows == [("s1", "superseded", "superseded by notification s3"), ("c1", "delivered", None),
                    ("s2", "superseded", "superseded by notification s3"), ("c2", "delivered", None),
                    ("s3", "pending", None)]  # fmt: skip
