"""The quarantine as a dead-letter queue, in SQL: list, show, and replay into the tables.

Replay runs in the short-lived ``xmppmon quarantine replay`` process, beside the agent if it is
running. Each chunk of rows is one short ``BEGIN IMMEDIATE`` transaction on its own connection
with ``busy_timeout`` (like the export job rows): the rows are read, re-parsed by the caller's
function, the valid ones inserted with the writer's own SQL (so de-duplication applies) and
deleted from quarantine, and the counters bumped, all in that transaction. A row is therefore
moved exactly once, whatever runs at the same time: a second replay finds it gone, and a
redelivered copy of the event meets the unique (ts, event_id) key. Alerts are not raised here:
the agent's writer owns them (it caches their state); replayed api calls are history anyway.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.events import HISTORY_KINDS, Event, InvalidEvent
from agent.exceptions import StoreError
from agent.store.connection import connect_readonly
from agent.store.drift import record_drift_sync, sightings
from agent.store.rows import BUMP_COUNTER, INSERT_API, INSERT_EVENT, UPSERT, state_rows

_COLUMNS = "id, reason, raw, sender, event_id, app, received_at"
CHUNK = 100


@dataclass(slots=True)
class Entry:
    """One quarantined event as stored."""

    id: int
    reason: str
    raw: str
    sender: str | None
    event_id: str | None
    app: str | None
    received_at: str


@dataclass(slots=True)
class Outcome:
    """What replay did (or, dry, would do) with one entry; ``why`` is the reason it stays, or what storing it did."""

    entry: Entry
    moved: bool
    why: str
    kind: str | None = None


def _where(reason: str | None, ids: Iterable[int] | None, since: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if reason:
        clauses.append("reason LIKE ? ESCAPE '\\'")
        escaped = reason.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params.append(f"%{escaped}%")
    ids = list(ids or ())
    if ids:
        clauses.append(f"id IN ({', '.join('?' * len(ids))})")
        params.extend(ids)
    if since:
        clauses.append("received_at >= ?")
        params.append(since)
    return (" AND ".join(clauses) or "1"), params


def list_entries(db: Path, reason: str | None = None, since: str | None = None, limit: int = 100) -> list[Entry]:
    """Quarantined events, newest first, filtered by a reason substring and an arrival time."""
    where, params = _where(reason, None, since)
    conn = connect_readonly(db)
    try:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM quarantine WHERE {where} ORDER BY id DESC LIMIT ?", (*params, limit)
        ).fetchall()
    except sqlite3.OperationalError as exc:
        raise StoreError(f"cannot read the quarantine of {db}: {exc}") from None
    finally:
        conn.close()
    return [Entry(*row) for row in rows]


def get_entry(db: Path, entry_id: int) -> Entry:
    conn = connect_readonly(db)
    try:
        row = conn.execute(f"SELECT {_COLUMNS} FROM quarantine WHERE id = ?", (entry_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise StoreError(f"no quarantined event {entry_id} in {db} (replayed already, or never there)")
    return Entry(*row)


def open_replay(db: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """A writing connection for replay: autocommit (explicit transactions), busy_timeout."""
    if not db.exists():
        raise StoreError(f"database {db} does not exist: has the agent run with this path?")
    conn = sqlite3.connect(db, timeout=busy_timeout_ms / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return conn


def _store(conn: sqlite3.Connection, event: Event, received_at: str) -> str:
    """Write one event as the writer would; say what happened."""
    p = event.payload
    if event.kind in HISTORY_KINDS:
        row: tuple[Any, ...] = (event.event_id, event.app, event.kind, event.ts, event.text, received_at)
        return "stored" if conn.execute(INSERT_EVENT, row).rowcount else "already stored (duplicate)"
    if event.kind == "api":
        row = (event.event_id, event.app, event.ts, p["api"], p.get("method"), p.get("path"), p["status"],
               p.get("request_id"), p.get("latency_ms"), p.get("detail"), event.text, received_at)  # fmt: skip
        return "stored" if conn.execute(INSERT_API, row).rowcount else "already stored (duplicate)"
    changed = sum(conn.execute(UPSERT[event.kind], r).rowcount for r in state_rows(event, received_at))
    return "stored" if changed else "older than the stored state (the newer value stays)"


def replay_chunk(
    conn: sqlite3.Connection,
    parse: Callable[[Entry], Event],
    after: int,
    *,
    reason: str | None = None,
    ids: Iterable[int] | None = None,
    dry_run: bool = False,
) -> list[Outcome]:
    """Replay the next :data:`CHUNK` entries with id > ``after`` in one transaction.

    ``parse`` re-parses an entry against the current contract and settings, raising
    ``InvalidEvent`` when it is still invalid. Dry runs only read.
    """
    where, params = _where(reason, ids, None)
    conn.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM quarantine WHERE id > ? AND {where} ORDER BY id LIMIT ?", (after, *params, CHUNK)
        ).fetchall()
        outcomes, moved, counters = [], [], Counter[str]()
        for entry in [Entry(*row) for row in rows]:
            try:
                event = parse(entry)
            except InvalidEvent as exc:
                outcomes.append(Outcome(entry, False, exc.reason))
                continue
            why = "valid now" if dry_run else _store(conn, event, entry.received_at)
            if not dry_run:
                conn.execute("DELETE FROM quarantine WHERE id = ?", (entry.id,))
                moved.append((event, entry.received_at))
                counters["quarantine_replayed"] += 1
                if why.startswith("already"):
                    counters["events_duplicate"] += 1
            outcomes.append(Outcome(entry, True, why, event.kind))
        if moved:
            record_drift_sync(conn, sightings([m for m in moved if m[0].drift], counters))
            conn.executemany(BUMP_COUNTER, list(counters.items()))
        conn.execute("ROLLBACK" if dry_run else "COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes
