"""Event identity: an id is stored once, whatever its ``ts``.

The Monitor API's ``id`` is the identity of an event. The tables' unique key is ``(ts, event_id)``:
time-ordered, so inserts land at the right edge of the B-tree (a unique index on the random id
alone makes every commit rewrite pages all over the tree: about 10x slower here). That key absorbs
every replay that carries the original stanza (resumption, offline storage, the archive), which
is the same ``ts``. What it cannot see is the same id with *another* ``ts`` (an upstream that
re-stamps an event it sends again). For that, the writer keeps an index of the ids it has stored,
in memory, in a database attached to its connection (so it commits and rolls back with the
batch): ``hash(id) -> ts``, two generations of at most ``window / 2`` ids each. A hit with another
``ts`` is confirmed exactly against the table before the event is dropped as a duplicate.

The window is bounded (``store.identity_window`` ids, about 40 MB for a million): an id that comes
back with another ``ts`` after more newer ids than that have been stored is not recognised. On
start, the index is filled from the newest rows of ``events`` and ``api_calls``.
"""

from __future__ import annotations

from typing import Any

import aiosqlite

_SCHEMA = "ident"
_TABLE = "CREATE TABLE IF NOT EXISTS ident.{name} (h INTEGER PRIMARY KEY, ts TEXT NOT NULL)"
_PROBE = 400  # ids per IN (...) probe, under SQLite's parameter limit


def _key(event_id: str) -> int:
    # Python's str hash: computed in C and cached on the string. It differs between processes,
    # which is fine for an index rebuilt by every process.
    return hash(event_id)


class Identity:
    """The ids the store holds (within a window), for the same id arriving with another ts."""

    def __init__(self, window: int) -> None:
        self.half = max(1, window // 2)
        self.current = 0  # ids in the current generation

    async def attach(self, conn: aiosqlite.Connection) -> None:
        """Attach the in-memory index to the writer's connection and fill it from the tables."""
        await conn.execute(f"ATTACH DATABASE ':memory:' AS {_SCHEMA}")
        for name in ("cur", "prev"):
            await conn.execute(_TABLE.format(name=name))
        rows: list[Any] = []
        for table in ("events", "api_calls"):
            rows += await conn.execute_fetchall(
                f"SELECT event_id, ts FROM {table} ORDER BY id DESC LIMIT ?", (self.half,)
            )
        await conn.execute("BEGIN")
        await conn.executemany("INSERT OR IGNORE INTO ident.cur VALUES (?, ?)", [(_key(r[0]), r[1]) for r in rows])
        await conn.commit()
        self.current = len(rows)

    async def split(
        self, conn: aiosqlite.Connection, rows: list[tuple[Any, ...]], table: str, id_at: int, ts_at: int
    ) -> tuple[list[tuple[Any, ...]], int]:
        """``rows`` (of ``table``) without those whose id is stored with another ts; and how many went.

        Runs in the writer's transaction. Rows whose id is already stored with the *same* ts pass:
        the table's ``(ts, event_id)`` key absorbs them, as it always did.
        """
        if not rows:
            return rows, 0
        keys = [_key(r[id_at]) for r in rows]
        known: dict[int, str] = {}
        for start in range(0, len(keys), _PROBE):
            chunk = keys[start : start + _PROBE]
            marks = ", ".join("?" * len(chunk))
            found = await conn.execute_fetchall(
                f"SELECT h, ts FROM ident.prev WHERE h IN ({marks}) UNION ALL"
                f" SELECT h, ts FROM ident.cur WHERE h IN ({marks})",
                chunk + chunk,
            )
            known.update((h, ts) for h, ts in found)
        kept: list[tuple[Any, ...]] = []
        fresh: list[tuple[int, str]] = []
        batch: dict[int, tuple[str, str]] = {}  # key -> (id, ts) of the rows kept from this batch
        for row, key in zip(rows, keys, strict=True):
            event_id, event_ts = row[id_at], row[ts_at]
            earlier = batch.get(key)
            if earlier is not None and earlier[0] == event_id:
                if earlier[1] != event_ts:
                    continue  # the same event twice in one batch, re-stamped: keep the first
            else:
                ts = known.get(key)
                if ts is not None and ts != event_ts and await _stored(conn, table, event_id, ts):
                    continue  # the same event, re-stamped: already stored under its first ts
                if ts is None:
                    fresh.append((key, event_ts))
                batch[key] = (event_id, event_ts)
            kept.append(row)
        if fresh:
            await conn.executemany("INSERT OR IGNORE INTO ident.cur VALUES (?, ?)", fresh)
            self.current += len(fresh)
        return kept, len(rows) - len(kept)

    async def rotate(self, conn: aiosqlite.Connection) -> None:
        """After a commit: once the current generation is full, the oldest one is forgotten."""
        if self.current < self.half:
            return
        await conn.execute("DROP TABLE ident.prev")
        await conn.execute("ALTER TABLE ident.cur RENAME TO prev")
        await conn.execute(_TABLE.format(name="cur"))
        self.current = 0


async def _stored(conn: aiosqlite.Connection, table: str, event_id: str, ts: str) -> bool:
    """Whether ``table`` holds exactly (ts, event_id): confirms a hash hit, which may be a collision."""
    found = await conn.execute_fetchall(f"SELECT 1 FROM {table} WHERE ts = ? AND event_id = ?", (ts, event_id))
    return bool(list(found))
