"""The forwarding change log in SQL: what is committed and not yet forwarded, the cursor, dead letters, status.

Four sources, each read in id order (docs/scale.md says why this and not one ``changes`` table):

============== =====================================================================
events         appended by the writer; read by rowid
api_calls      appended by the writer; read by rowid
state_changes  one row per effective upsert, written by migration 7's triggers in the
               writer's transaction (the state tables keep only the newest value)
notifications  appended with each alert transition; forwarded when ``forward.alerts``
============== =====================================================================

``forward_cursor`` holds, per source, the highest id whose publish JetStream acknowledged;
retention ANDs :func:`retention_guard` into its DELETE so that it never removes a record above it.
Only the sidecar's forwarder writes the forward tables, on its own connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiosqlite

from agent.events import epoch, iso
from agent.store.connection import open_writer

SOURCES: Final = ("events", "api_calls", "state_changes", "notifications")
#: The acknowledged (or sent) id of each source, in the order of :data:`SOURCES`.
Position = tuple[int, int, int, int]
START: Final[Position] = (0, 0, 0, 0)
_MAX_ID = 9223372036854775807

_READ: Final = {
    "events": "SELECT id, event_id, app, kind, ts, received_at, payload, NULL FROM events"
    " WHERE id > ? ORDER BY id LIMIT ?",
    "api_calls": "SELECT id, event_id, app, 'api', ts, received_at, payload, NULL FROM api_calls"
    " WHERE id > ? ORDER BY id LIMIT ?",
    "state_changes": "SELECT id, event_id, app, kind, ts, received_at, state, NULL FROM state_changes"
    " WHERE id > ? ORDER BY id LIMIT ?",
    "notifications": "SELECT n.id, n.key, coalesce(a.app, ''), 'alert', n.created_at, n.created_at, n.alert,"
    " n.transition FROM notifications n LEFT JOIN alerts a ON a.id = n.alert_id WHERE n.id > ? ORDER BY n.id LIMIT ?",
}
_TIME: Final = {
    "events": "SELECT received_at FROM events WHERE id > ? ORDER BY id LIMIT 1",
    "api_calls": "SELECT received_at FROM api_calls WHERE id > ? ORDER BY id LIMIT 1",
    "state_changes": "SELECT received_at FROM state_changes WHERE id > ? ORDER BY id LIMIT 1",
    "notifications": "SELECT created_at FROM notifications WHERE id > ? ORDER BY id LIMIT 1",
}


@dataclass(slots=True)
class Record:
    """One committed record to forward; ``body`` is JSON text (payload, state or alert snapshot)."""

    source: int  # index into SOURCES
    id: int
    ident: str  # the event id, or the notification's idempotency key
    app: str
    kind: str
    ts: str
    received_at: str
    body: str
    transition: str | None = None


@dataclass(slots=True)
class Dead:
    """A record the cluster cannot take, kept with the reason and the message it would have been."""

    source: int
    record_id: int
    subject: str
    size: int
    reason: str
    message: str


def retention_guard(table: str) -> str:
    """SQL true for the rows of ``table`` that retention may delete: AND it into the DELETE's WHERE.

    Keeps every row the forwarder has not had acknowledged (above its cursor, when it has one)
    and, in the rowid tables, always the newest row: SQLite gives a new row max(rowid)+1, so
    deleting the newest row would let new records reuse ids at or below the cursor, which the
    forwarder would then never send. Example::

        DELETE FROM events WHERE received_at < ? AND {retention_guard('events')}
    """
    if table not in SOURCES:
        raise ValueError(f"{table!r} is not a forwarded table; use one of {', '.join(SOURCES)}")
    above = f"coalesce((SELECT last_id FROM forward_cursor WHERE source = '{table}'), {_MAX_ID})"
    if table == "state_changes":  # AUTOINCREMENT: ids are never reused
        return f"{table}.id <= {above}"
    return f"({table}.id <= {above} AND {table}.id < (SELECT coalesce(max(id), 0) FROM {table}))"


def forward_status(conn: sqlite3.Connection) -> dict[str, object] | None:
    """The forwarder's last published state (lag_seconds, pending, stream, state, error...), or None.

    What ``xmppmon status`` shows and what metrics read; ``lag_seconds`` is the age of the oldest
    committed record JetStream has not acknowledged, refreshed every second while the sidecar runs.
    """
    try:
        rows = conn.execute("SELECT key, value, updated_at FROM forward_state").fetchall()
    except sqlite3.OperationalError:  # a database from before migration 7
        return None
    if not rows:
        return None
    status: dict[str, object] = {}
    newest = ""
    for key, value, updated_at in rows:
        status[key] = _number(value)
        newest = max(newest, updated_at)
    status["updated_at"] = newest
    status["dead_letters"] = conn.execute("SELECT count(*) FROM forward_dead").fetchone()[0]
    return status


def _number(value: str | None) -> object:
    if value is None:
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


class ChangeLog:
    """The forwarder's connection: reads the sources, saves progress in one short transaction."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()  # one transaction at a time: the pump and the watch task share it

    @classmethod
    async def open(cls, path: Path, busy_timeout_ms: int = 30_000) -> ChangeLog:
        return cls(await open_writer(path, busy_timeout_ms))

    async def close(self) -> None:
        await self._conn.close()

    async def cursor(self) -> Position:
        rows = await self._conn.execute_fetchall("SELECT source, last_id FROM forward_cursor")
        saved = {r[0]: int(r[1]) for r in rows}
        return (saved.get(SOURCES[0], 0), saved.get(SOURCES[1], 0), saved.get(SOURCES[2], 0), saved.get(SOURCES[3], 0))

    async def read(self, after: Position, sources: Iterable[int], limit: int) -> list[Record]:
        """Up to ``limit`` records of each source in ``sources`` above ``after``, each source in id order."""
        records: list[Record] = []
        for i in sources:
            rows = await self._conn.execute_fetchall(_READ[SOURCES[i]], (after[i], limit))
            records.extend(Record(i, *row) for row in rows)
        return records

    async def dead_above(self, after: Position) -> set[tuple[int, int]]:
        """(source, id) of the dead-lettered records above ``after``: the sender skips them."""
        dead: set[tuple[int, int]] = set()
        for i, name in enumerate(SOURCES):
            rows = await self._conn.execute_fetchall(
                "SELECT record_id FROM forward_dead WHERE source = ? AND record_id > ?", (name, after[i])
            )
            dead.update((i, int(r[0])) for r in rows)
        return dead

    async def behind(self, position: Position, sources: Iterable[int]) -> list[str]:
        """The rowid tables whose newest id is below the position: new rows there would reuse forwarded ids."""
        behind = []
        for i in sources:
            name = SOURCES[i]
            if name == "state_changes" or not position[i]:
                continue  # AUTOINCREMENT never reuses an id
            top = list(await self._conn.execute_fetchall(f"SELECT coalesce(max(id), 0) FROM {name}"))
            if int(top[0][0]) < position[i]:
                behind.append(name)
        return behind

    async def waiting(self, after: Position, sources: Iterable[int]) -> tuple[float, int]:
        """(lag in seconds, records waiting): the age of the oldest record above ``after`` and a count.

        The count is max(id) minus the cursor: exact while nothing is deleted above the cursor.
        """
        oldest: float | None = None
        pending = 0
        for i in sources:
            name = SOURCES[i]
            rows = list(await self._conn.execute_fetchall(_TIME[name], (after[i],)))
            if rows:
                moment = epoch(rows[0][0])
                oldest = moment if oldest is None else min(oldest, moment)
                top = list(await self._conn.execute_fetchall(f"SELECT max(id) FROM {name}"))
                pending += max(0, int(top[0][0] or 0) - after[i])
        lag = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        return lag, pending

    async def save(
        self, position: Position | None, dead: list[Dead], state: dict[str, object], sources: Iterable[int] = ()
    ) -> None:
        """Record the acknowledged position of ``sources``, new dead letters and status keys in one transaction.

        The other sources' cursor rows are removed: a source not forwarded must not hold retention back.
        """
        async with self._lock:
            await self._save(position, dead, state, set(sources))

    async def _save(
        self, position: Position | None, dead: list[Dead], state: dict[str, object], sources: set[int]
    ) -> None:
        now = iso(time.time())
        conn = self._conn
        await conn.execute("BEGIN IMMEDIATE")
        try:
            if position is not None:
                await conn.executemany(
                    "INSERT INTO forward_cursor (source, last_id, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (source) DO UPDATE SET last_id = excluded.last_id,"
                    " updated_at = excluded.updated_at",
                    [(name, position[i], now) for i, name in enumerate(SOURCES) if i in sources],
                )
                await conn.executemany(
                    "DELETE FROM forward_cursor WHERE source = ?",
                    [(name,) for i, name in enumerate(SOURCES) if i not in sources],
                )
            if dead:
                await conn.executemany(
                    "INSERT OR IGNORE INTO forward_dead (source, record_id, subject, bytes, reason, message,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(SOURCES[d.source], d.record_id, d.subject, d.size, d.reason, d.message, now) for d in dead],
                )
            if state:
                await conn.executemany(
                    "INSERT INTO forward_state (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key)"
                    " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    [(k, None if v is None else str(v), now) for k, v in state.items()],
                )
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
