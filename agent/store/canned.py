"""``xmppmon browse``'s Datasette metadata: descriptions, facets and the canned queries, as SQL.

Datasette opens the database read-only (``mode=ro``: it never takes a write lock, so the agent's
writer never waits for it) and runs these as named pages (``/DB/QUERY``, ``.json`` for scripts).
"""

from __future__ import annotations

from typing import Any, Final

from agent.reasons import reason_class_sql
from agent.store.catalog import TABLES
from agent.store.readers import VIEWS

FACET_COLUMNS: Final = ("kind", "app", "status")
_TODAY = "strftime('%Y-%m-%dT00:00:00', 'now')"
_DEVICE_SOURCES = " UNION ALL ".join(
    f"SELECT app, device_id, ts FROM {table} WHERE ts >= {_TODAY}"
    for table in ("devices", "tags", "tokens", "push_feedback")
)

#: name -> (title, description, SQL)
QUERIES: Final[dict[str, tuple[str, str, str]]] = {
    "events_per_minute": (
        "Events per minute by kind, last hour",
        "Events per minute of event time and kind over the last hour; API calls count as kind api.",
        VIEWS["events-per-minute"][1],
    ),
    "firing_alerts": (
        "Firing alerts",
        "Alerts firing now, most severe first; the notifications table holds each transition.",
        "SELECT id, severity, source, app, code, api, class, count, fired_at, last_seen, detail FROM alerts"
        " WHERE state = 'firing'"
        " ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, fired_at",
    ),
    "failed_deliveries": (
        "Failed and dead-lettered deliveries",
        "Delivery attempts that did not deliver (retry, failed, dead, unauthorized), newest first, with"
        " where the notification stands now for that sink (pending, delivered, dead).",
        "SELECT d.id, d.sink, d.notification_id, d.attempt, d.status, d.http_status, d.error,"
        " s.state AS state_now, s.reason AS dead_reason, d.request_id, d.finished_at"
        " FROM deliveries d LEFT JOIN delivery_state s"
        " ON s.sink = d.sink AND s.notification_id = d.notification_id"
        " WHERE d.status <> 'delivered' ORDER BY d.id DESC LIMIT 1000",
    ),
    "quarantine_by_reason": (
        "Quarantine by reason",
        "Quarantined events per reason, with the short class used by the metrics and xmppmon top.",
        f"SELECT {reason_class_sql()} AS class, reason, count(*) AS events, min(received_at) AS first_seen,"
        " max(received_at) AS last_seen FROM quarantine GROUP BY reason ORDER BY class, events DESC",
    ),
    "devices_seen_today": (
        "Devices seen today",
        "Each device named by an event of today (UTC, by event time): history events and state updates.",
        "SELECT app, device_id, count(*) AS events, min(ts) AS first_seen, max(ts) AS last_seen FROM ("
        f" SELECT app, json_extract(payload, '$.device_id') AS device_id, ts FROM events WHERE ts >= {_TODAY}"
        f" UNION ALL {_DEVICE_SOURCES})"
        " GROUP BY app, device_id ORDER BY last_seen DESC",
    ),
    "slowest_api_calls": (
        "Slowest API calls, last 24 hours",
        "The 100 API calls of the last 24 hours (event time) with the highest latency_ms.",
        "SELECT ts, app, api, method, path, status, latency_ms, request_id, detail FROM api_calls"
        " WHERE latency_ms IS NOT NULL AND ts >= strftime('%Y-%m-%dT%H:%M:%S', 'now', '-1 day')"
        " ORDER BY latency_ms DESC LIMIT 100",
    ),
}


def metadata(database: str) -> dict[str, Any]:
    """Datasette's metadata for a database file named ``database`` (its stem)."""
    tables = {
        name: {
            "description": about,
            "columns": columns,
            **({"facets": facets} if (facets := [c for c in FACET_COLUMNS if c in columns]) else {}),
        }
        for name, (about, columns) in TABLES.items()
    }
    queries = {
        name: {"title": title, "description": about, "sql": sql} for name, (title, about, sql) in QUERIES.items()
    }
    return {
        "title": "xmppmon",
        "description": "The agent's database, read-only: events, API calls, state, quarantine, alerts, deliveries.",
        "databases": {database: {"tables": tables, "queries": queries}},
    }
