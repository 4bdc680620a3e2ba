"""Reads for live views: ``xmppmon top``'s frames and the gauges the metrics read at scrape time.

Every function takes a read-only connection (:func:`agent.store.readers.reading`) and holds it only
for its statements. :class:`Tally` counts the rows of an append-only table per label and per time
bucket of arrival, reading only the rows added since its previous call (by rowid), so a view that
refreshes every second costs what arrived meanwhile, not the whole window again.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.events import epoch, iso
from agent.reasons import reason_class_sql
from agent.store.readers import reading

#: julianday() of the Unix epoch: (julianday(t) - this) * 86400 is t in epoch seconds.
_EPOCH_DAY = 2440587.5
_SEVERITY_ORDER = "CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END"


def _bucket_sql(column: str) -> str:
    return f"CAST((julianday({column}) - {_EPOCH_DAY}) * 86400.0 / ? AS INTEGER)"


@dataclass
class Tally:
    """Rows of ``table`` per label (an SQL expression) and per ``bucket``-second slice of ``received_at``."""

    table: str
    label: str
    bucket: float
    totals: bool = False
    last_id: int | None = None
    buckets: Counter[tuple[str, int]] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)

    def read(self, conn: sqlite3.Connection, since: float) -> None:
        """Add the rows committed since the previous call; the first call reads from ``since``."""
        if self.last_id is None:
            top = conn.execute(f"SELECT coalesce(max(id), 0) FROM {self.table}").fetchone()[0]
            if self.totals:
                sql = f"SELECT {self.label}, count(*) FROM {self.table} WHERE id <= ? GROUP BY 1"
                self.total.update(dict(conn.execute(sql, (top,)).fetchall()))
            self.last_id = self._last_before(conn, iso(since), top)
            if self.totals:  # rows of the window are counted again below: take them out first
                sql = f"SELECT {self.label}, count(*) FROM {self.table} WHERE id > ? AND id <= ? GROUP BY 1"
                self.total.subtract(dict(conn.execute(sql, (self.last_id, top)).fetchall()))
        rows = conn.execute(
            f"SELECT {self.label}, {_bucket_sql('received_at')}, count(*), max(id) FROM {self.table}"
            " WHERE id > ? GROUP BY 1, 2",
            (self.bucket, self.last_id),
        ).fetchall()
        for label, slot, count, top_id in rows:
            self.buckets[(label, slot)] += count
            if self.totals:
                self.total[label] += count
            self.last_id = max(self.last_id, top_id)
        oldest = int(since // self.bucket)
        for key in [k for k in self.buckets if k[1] < oldest]:
            del self.buckets[key]

    def _last_before(self, conn: sqlite3.Connection, since: str, top: int) -> int:
        """The highest id that arrived before ``since`` (ids grow with arrival): a binary search."""
        first = conn.execute(f"SELECT min(id) FROM {self.table}").fetchone()[0]
        if first is None:
            return 0

        def at_or_after(row_id: int) -> tuple[int, str]:
            row = conn.execute(
                f"SELECT id, received_at FROM {self.table} WHERE id >= ? ORDER BY id LIMIT 1", (row_id,)
            ).fetchone()
            return int(row[0]), str(row[1])

        if at_or_after(top)[1] < since:
            return top
        found, lo, hi = top, first, top - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            row_id, received = at_or_after(mid)
            if row_id > hi:
                hi = mid - 1
            elif received >= since:
                found, hi = row_id, mid - 1
            else:
                lo = row_id + 1
        return found - 1


def activity_tallies(bucket: float) -> list[Tally]:
    """Arrivals per kind (history kinds and api) and quarantined items per reason class."""
    return [
        Tally("events", "kind", bucket),
        Tally("api_calls", "'api'", bucket),
        Tally("quarantine", reason_class_sql(), bucket, totals=True),
    ]


def state_updates(conn: sqlite3.Connection, since: float, bucket: float) -> Counter[tuple[str, int]]:
    """Keys of the state tables updated per kind and bucket since ``since`` (one row per key: a floor)."""
    counts: Counter[tuple[str, int]] = Counter()
    for kind, table in (("device", "devices"), ("tag", "tags"), ("token", "tokens"), ("push", "push_feedback")):
        sql = f"SELECT {_bucket_sql('received_at')}, count(*) FROM {table} WHERE received_at >= ? GROUP BY 1"
        for slot, count in conn.execute(sql, (bucket, iso(since))):
            counts[(kind, slot)] += count
    return counts


def agent_state(conn: sqlite3.Connection) -> dict[str, str | None]:
    return {row[0]: row[1] for row in conn.execute("SELECT key, value FROM agent_state")}


def firing_alerts(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """Firing alerts, most severe and oldest first."""
    try:
        cursor = conn.execute(
            "SELECT severity, source, app, code, api, count, coalesce(fired_at, first_seen) AS since, detail"
            f" FROM alerts WHERE state = 'firing' ORDER BY {_SEVERITY_ORDER}, since LIMIT ?",
            (limit,),
        )
    except sqlite3.OperationalError:  # a database from before the alerts migration
        return []
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def firing_by_severity(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT severity, count(*) FROM alerts WHERE state = 'firing' GROUP BY severity")
    return {str(severity): int(count) for severity, count in rows}


@dataclass
class SinkProgress:
    """One sink's undelivered notifications, the age of the oldest (its lag) and its last delivery."""

    sink: str
    pending: int
    lag_seconds: float
    failing: str | None
    last_delivered: str | None


#: How far back in ``deliveries`` to look for a sink's last delivery (a sink that never delivers
#: must not cost a scan of every attempt ever made at each refresh).
RECENT_ATTEMPTS = 10_000


def sink_progress(
    conn: sqlite3.Connection, now: float, sinks: list[str] | None = None, last_delivered: bool = True
) -> list[SinkProgress]:
    """Per sink (those the sidecar has seen, plus ``sinks``): notifications not yet delivered.

    ``last_delivered``: also find each sink's last delivery among the last RECENT_ATTEMPTS attempts.
    """
    known = {row[0]: (row[1], row[2]) for row in conn.execute("SELECT sink, last_id, failing FROM sink_cursor")}
    result = []
    for sink in sorted(set(known) | set(sinks or ())):
        last_id, failing = known.get(sink, (0, None))
        unseen, first_unseen = conn.execute(
            "SELECT count(*), min(created_at) FROM notifications WHERE id > ?", (last_id,)
        ).fetchone()
        pending, first_pending = conn.execute(
            "SELECT count(*), min(n.created_at) FROM delivery_state d JOIN notifications n"
            " ON n.id = d.notification_id WHERE d.sink = ? AND d.state = 'pending'",
            (sink,),
        ).fetchone()
        oldest = min((t for t in (first_unseen, first_pending) if t), default=None)
        delivered = None
        if last_delivered:
            delivered = conn.execute(
                "SELECT finished_at FROM deliveries WHERE id > (SELECT coalesce(max(id), 0) FROM deliveries) - ?"
                " AND sink = ? AND status = 'delivered' ORDER BY id DESC LIMIT 1",
                (RECENT_ATTEMPTS, sink),
            ).fetchone()
        lag = max(0.0, now - epoch(oldest)) if oldest else 0.0
        result.append(SinkProgress(sink, unseen + pending, lag, failing, delivered[0] if delivered else None))
    return result


def newest_arrival(path: Path) -> str | None:
    """When the newest row of ``events`` or ``api_calls`` arrived: the last row by id, no scan."""
    with reading(path) as conn:
        found = [
            row[0]
            for table in ("events", "api_calls")
            if (row := conn.execute(f"SELECT received_at FROM {table} ORDER BY id DESC LIMIT 1").fetchone())
        ]
    return max(found, default=None)


def counters(conn: sqlite3.Connection) -> dict[str, int]:
    return {row[0]: int(row[1]) for row in conn.execute("SELECT name, value FROM counters")}
