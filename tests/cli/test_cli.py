"""xmppmon status and query: the operator's fields, --json, and the documented views."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson

from agent.config import StoreSettings
from agent.store import Store
from agent.store.readers import VIEWS


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


async def database(tmp_path: Path) -> Path:
    db = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=db))
    store.set_state("started_at", "2024-05-01T00:00:00.000Z")
    store.set_state("session", "connected")
    store.set_state("reconnects", 2)
    store.set_state("last_ping_rtt_ms", 12.5)
    await store.close()
    return db


async def test_status_json_has_the_operator_fields(tmp_path: Path) -> None:
    """status --json reports uptime, reconnects, ping RTT, heartbeat age, alerts and the per-sink backlog."""
    db = await database(tmp_path)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO alerts (source, app, code, api, class, severity, state, count, first_seen,"
                     " last_seen, window_start, window_count) VALUES ('api', 'demo', '500', 'push', 'server',"
                     " 'critical', 'firing', 3, 'x', 'x', 'x', 3)")  # fmt: skip
        conn.executemany("INSERT INTO notifications (key, alert_id, transition, alert, created_at) VALUES (?, 1, 'firing', '{}', 'x')",
                         [("k1",), ("k2",), ("k3",)])  # fmt: skip
        conn.execute("INSERT INTO sink_cursor VALUES ('webhook', 1, NULL, 'x'), ('alertmanager', 3, NULL, 'x')")
        conn.execute("INSERT INTO delivery_state (sink, notification_id, state, attempts, next_attempt_at, reason,"
                     " updated_at) VALUES ('webhook', 1, 'pending', 1, 'x', NULL, 'x')")  # fmt: skip
    conn.close()
    result = cli("status", "--json", "--database", str(db))
    assert result.returncode == 0, result.stderr
    status = orjson.loads(result.stdout)
    assert status["uptime_s"] > 0 and status["reconnects"] == 2 and status["last_ping_rtt_ms"] == 12.5
    assert status["undelivered_per_sink"] == {"alertmanager": 0, "webhook": 3}
    assert status["firing_alerts"] == 1
    assert "heartbeat_age_s" in status
    text = cli("status", "--database", str(db)).stdout
    assert "uptime s" in text and "undelivered per sink" in text


async def test_status_tolerates_a_database_without_sidecar_tables(tmp_path: Path) -> None:
    """Without the alerts and outbox tables, status still works and reports those fields as absent."""
    db = await database(tmp_path)
    conn = sqlite3.connect(db)
    conn.executescript("DROP TABLE deliveries; DROP TABLE delivery_state; DROP TABLE sink_cursor;"
                       " DROP TABLE notifications; DROP TABLE alerts;")  # fmt: skip
    conn.close()
    result = cli("status", "--json", "--database", str(db))
    assert result.returncode == 0, result.stderr
    status = orjson.loads(result.stdout)
    assert status["undelivered_per_sink"] is None and status["firing_alerts"] is None

    result = cli("query", "--view", "open-alerts", "--database", str(db))
    assert result.returncode == 1 and "needs a table this database lacks" in result.stderr


async def test_every_view_runs_and_formats(tmp_path: Path) -> None:
    """Each documented view runs on a fresh database, as a table, CSV and JSON lines."""
    db = await database(tmp_path)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO events (event_id, app, kind, ts, payload, received_at)"
                     " VALUES ('e1', 'demo', 'crash', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), '{}', 'x')")  # fmt: skip
    conn.close()
    for name in VIEWS:
        for flag in ("--csv", "--json"):
            result = cli("query", "--view", name, flag, "--database", str(db))
            assert result.returncode == 0, (name, result.stderr)
    rows = cli("query", "--view", "events-per-minute", "--json", "--database", str(db)).stdout.splitlines()
    assert orjson.loads(rows[0])["kind"] == "crash" and orjson.loads(rows[0])["events"] == 1
    listing = cli("query", "--database", str(db))
    assert listing.returncode == 1 and "failed-deliveries" in listing.stderr
