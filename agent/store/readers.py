"""Every read-only query of the project: status, query views, tail, alerts, doctor, the agent's own reads.

The CLI and the supervisor read through :func:`agent.store.connection.connect_readonly` (a
``mode=ro`` URI, ``query_only``); each function here holds its read transaction only for the
statements it runs, so a reader left open for hours never pins the WAL.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from agent.events import epoch, iso
from agent.exceptions import XmppmonError
from agent.store.changes import forward_status
from agent.store.connection import connect_readonly

_TABLES = ("events", "api_calls", "devices", "tags", "tokens", "push_feedback", "quarantine")


@contextmanager
def reading(path: Path, timeout: float = 5.0) -> Iterator[sqlite3.Connection]:
    """A read-only connection, closed on exit."""
    conn = connect_readonly(path, timeout)
    try:
        yield conn
    finally:
        conn.close()


def _number(value: str | None) -> float | int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return float(value)


def read_status(path: Path) -> dict[str, Any]:
    """What ``xmppmon status`` shows, from the database alone (the agent may be down)."""
    with reading(path) as conn:
        state = {row["key"]: row["value"] for row in conn.execute("SELECT key, value FROM agent_state")}
        counters = {row["name"]: row["value"] for row in conn.execute("SELECT name, value FROM counters")}
        since = iso(time.time() - 60)
        last_minute = conn.execute(
            "SELECT (SELECT count(*) FROM events WHERE ts >= ?1) + (SELECT count(*) FROM api_calls WHERE ts >= ?1)",
            (since,),
        ).fetchone()[0]
        totals = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in _TABLES}
        reasons = {
            row[0]: row[1]
            for row in conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason ORDER BY 2 DESC LIMIT 10")
        }
        backlog, firing = _sidecar_backlog(conn)
        forward = forward_status(conn)
    now = time.time()
    heartbeat_age = round(now - epoch(state["heartbeat"]), 1) if state.get("heartbeat") else None
    uptime = None
    if state.get("started_at") and state.get("session") != "stopped":
        uptime = round(now - epoch(state["started_at"]))
    return {
        "database": str(path),
        "session": state.get("session"),
        "started_at": state.get("started_at"),
        "uptime_s": uptime,
        "connected_since": state.get("connected_since"),
        "last_error": state.get("last_error"),
        "last_ping_rtt_ms": _number(state.get("last_ping_rtt_ms")),
        "last_ping_at": state.get("last_ping_at"),
        "heartbeat_age_s": heartbeat_age,
        "reconnects": _number(state.get("reconnects")),
        "firing_alerts": firing,
        "undelivered_per_sink": backlog,
        "forward": forward,
        "subscriptions": orjson.loads(state["subscriptions"]) if state.get("subscriptions") else {},
        "events_last_minute": last_minute,
        "rows": totals,
        "counters": counters,
        "quarantine_reasons": reasons,
        "version": state.get("version"),
        "pid": _number(state.get("pid")),
    }


def _sidecar_backlog(conn: sqlite3.Connection) -> tuple[dict[str, int] | None, int | None]:
    """Undelivered notifications per sink and firing alerts; None where the tables are absent."""
    try:
        backlog = {
            row[0]: row[1]
            for row in conn.execute(
                "SELECT c.sink, (SELECT count(*) FROM notifications n WHERE n.id > c.last_id)"
                " + (SELECT count(*) FROM delivery_state d WHERE d.sink = c.sink"
                " AND d.state = 'pending') FROM sink_cursor c ORDER BY c.sink"
            )
        }
    except sqlite3.OperationalError:  # no sidecar tables in this database
        backlog = None
    return backlog, _firing(conn)


def _firing(conn: sqlite3.Connection) -> int | None:
    try:
        return int(conn.execute("SELECT count(*) FROM alerts WHERE state = 'firing'").fetchone()[0])
    except sqlite3.OperationalError:
        return None


def firing_count(path: Path) -> int | None:
    """Firing alerts, or None when the database or its ``alerts`` table cannot be read."""
    try:
        with reading(path, timeout=1.0) as conn:
            return _firing(conn)
    except (XmppmonError, sqlite3.Error):
        return None


#: ``xmppmon query --view NAME``: name -> (what it shows, SQL). Documented in docs/operations.md.
VIEWS: dict[str, tuple[str, str]] = {
    "events-per-minute": (
        "events per minute per kind over the last hour (api calls as kind 'api')",
        "SELECT minute, kind, count(*) AS events FROM ("
        " SELECT substr(ts, 1, 16) AS minute, kind FROM events"
        "  WHERE ts >= strftime('%Y-%m-%dT%H:%M', 'now', '-60 minutes')"
        " UNION ALL SELECT substr(ts, 1, 16), 'api' FROM api_calls"
        "  WHERE ts >= strftime('%Y-%m-%dT%H:%M', 'now', '-60 minutes'))"
        " GROUP BY minute, kind ORDER BY minute DESC, kind",
    ),
    "open-alerts": (
        "firing and pending alerts, firing first",
        "SELECT id, state, severity, source, app, code, api, count, first_seen, last_seen, detail"
        " FROM alerts WHERE state IN ('firing', 'pending')"
        " ORDER BY state = 'firing' DESC, last_seen DESC",
    ),
    "failed-deliveries": (
        "notification delivery attempts that failed, newest first",
        "SELECT id, sink, notification_id, attempt, status, http_status, error, request_id,"
        " finished_at FROM deliveries WHERE status <> 'delivered' ORDER BY id DESC",
    ),
    "exports": (
        "export jobs and their state",
        "SELECT id, type, data, from_ts, to_ts, state, rows, bytes, error, created_at, finished_at"
        " FROM export_jobs ORDER BY id DESC",
    ),
}

Rows = tuple[list[str], list[tuple[Any, ...]]]


def run_query(path: Path, sql: str, limit: int) -> Rows:
    """One read-only statement's column names and first ``limit`` rows; sqlite3.Error propagates."""
    with reading(path) as conn:
        cursor = conn.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        return columns, [tuple(row) for row in cursor.fetchmany(limit)]


def list_alerts(path: Path, every: bool, resolved_since: float) -> Rows:
    """Firing, pending and recently resolved alerts (``every``: all of them), firing first."""
    where = "" if every else "WHERE state IN ('firing', 'pending') OR (state = 'resolved' AND resolved_at >= ?)"
    with reading(path) as conn:
        cursor = conn.execute(
            "SELECT id, state, severity, source, app, code, api, count, first_seen, last_seen,"
            f" resolved_at, detail FROM alerts {where} ORDER BY state = 'firing' DESC, last_seen DESC",
            () if every else (iso(resolved_since),),
        )
        return [d[0] for d in cursor.description or ()], [tuple(row) for row in cursor.fetchall()]


class Tail:
    """Newest rows of ``events`` (or ``api_calls``) by id, one short read per poll."""

    def __init__(self, path: Path, api: bool) -> None:
        self.path = path
        self.table = "api_calls" if api else "events"
        self.columns = "id, ts, app, api || ' ' || status AS kind, event_id" if api else "id, ts, app, kind, event_id"
        self.last = 0

    def start(self, lines: int) -> None:
        with reading(self.path) as conn:
            self.last = conn.execute(f"SELECT coalesce(max(id), 0) FROM {self.table}").fetchone()[0] - lines

    def poll(self, limit: int = 1000) -> list[sqlite3.Row]:
        with reading(self.path) as conn:
            rows = conn.execute(
                f"SELECT {self.columns} FROM {self.table} WHERE id > ? ORDER BY id LIMIT ?", (self.last, limit)
            ).fetchall()
        if rows:
            self.last = rows[-1]["id"]
        return rows


def quick_check(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("PRAGMA quick_check")]


def schema_version(conn: sqlite3.Connection) -> int:
    """The database's schema version, 0 before the first migration."""
    try:
        return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


# -- the agent's own reads, on its writing connection ----------------------------------------


async def read_state(conn: aiosqlite.Connection) -> dict[str, str | None]:
    """The ``agent_state`` table as a dict (what was committed)."""
    async with conn.execute("SELECT key, value FROM agent_state") as cursor:
        return {row[0]: row[1] async for row in cursor}


async def last_received_at(conn: aiosqlite.Connection) -> str | None:
    """When the newest committed event arrived (for archive catch-up), or None."""
    async with conn.execute(
        "SELECT max(m) FROM (SELECT max(received_at) AS m FROM events UNION ALL SELECT max(received_at) FROM api_calls)"
    ) as cursor:
        row = await cursor.fetchone()
    return row[0] if row else None
