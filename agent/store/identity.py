"""Event identity: an id is stored once, whatever its ``ts``.

The Monitor API's ``id`` is the identity of an event. The tables' unique key is ``(ts, event_id)``:
time-ordered, so inserts land at the right edge of the B-tree (a unique index on the random id
alone makes every commit rewrite pages all over the tree: about 10x slower here). That key absorbs
every replay that carries the original stanza (resumption, offline storage, the archive), which
is the same ``ts``. What it cannot see is the same id with *another* ``ts`` (an upstream that
re-stamps an event it sends again). For that, the writer keeps an index of the ids it has stored,
in this process's memory: ``hash(id) -> ts``. A hit with another ``ts`` is confirmed exactly
against the table (``SELECT`` on its ``(ts, event_id)`` key) before the event is dropped as a
duplicate, so a hash collision, or an id of a transaction that did not commit, never drops one.

Layout (numpy: sorted arrays searched in C, 8 bytes of key and 24 of ts per id): the ids of the
latest commits sit in a dict; every ``block`` of them is frozen into a sorted block; the oldest
block is forgotten once the window is full. An attached in-memory SQLite table did the same job
at about half the writer's rate (``bench/pipeline.py``: every id was a random B-tree insert).

The window is bounded (``store.identity_window`` ids, about 35 MB for a million): the newest
``window`` ids are always recognised, older ones (up to a block more) may be forgotten. On start,
the index is filled from the newest rows of ``events`` and ``api_calls``.
"""

from __future__ import annotations

from typing import Any

import aiosqlite
import numpy as np

_BLOCKS = 16  # a window is this many blocks: what is forgotten at once is 1/16 of it
_MAX_BLOCK = 65_536


def _key(event_id: str) -> int:
    # Python's str hash: computed in C and cached on the string, a signed 64-bit value. It differs
    # between processes, which is fine for an index rebuilt by every process.
    return hash(event_id)


class Identity:
    """The ids the store holds (within a window), for the same id arriving with another ts."""

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self.block = max(1, min(_MAX_BLOCK, self.window // _BLOCKS))
        self.recent: dict[int, str] = {}  # committed, not yet frozen
        self.staged: dict[int, str] = {}  # this transaction's new ids: recent once it commits
        self.blocks: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []  # (keys, ts), oldest first
        self.frozen = 0  # ids in blocks

    def __len__(self) -> int:
        return self.frozen + len(self.recent)

    async def attach(self, conn: aiosqlite.Connection) -> None:
        """Fill the index from the newest rows of the tables (oldest first, as if stored in order)."""
        rows: list[Any] = []
        for table in ("events", "api_calls"):
            rows += await conn.execute_fetchall(
                f"SELECT event_id, ts FROM {table} ORDER BY id DESC LIMIT ?", (self.window,)
            )
        for event_id, ts in reversed(rows[: self.window]):
            self.staged.setdefault(_key(event_id), ts)
        self.committed()

    async def split(
        self, conn: aiosqlite.Connection, rows: list[tuple[Any, ...]], table: str, id_at: int, ts_at: int
    ) -> tuple[list[tuple[Any, ...]], int]:
        """``rows`` (of ``table``) without those whose id is stored with another ts; and how many went.

        Runs in the writer's transaction: the ids it keeps are staged, and become known with
        :meth:`committed` (or are dropped by the next :meth:`begin`). Rows whose id is already stored
        with the *same* ts pass: the table's ``(ts, event_id)`` key absorbs them, as it always did.
        """
        if not rows:
            return rows, 0
        keys = [_key(r[id_at]) for r in rows]
        known = self._lookup(keys)
        if not known and len(set(keys)) == len(keys):  # the usual batch: every id new, once
            self.staged.update(zip(keys, [r[ts_at] for r in rows], strict=True))
            return rows, 0
        kept: list[tuple[Any, ...]] = []
        batch: dict[int, tuple[str, str]] = {}  # key -> (id, ts) of the rows kept from this call
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
                    self.staged.setdefault(key, event_ts)
                batch[key] = (event_id, event_ts)
            kept.append(row)
        return kept, len(rows) - len(kept)

    def committed(self) -> None:
        """The transaction committed: its ids are known; full blocks freeze, the oldest beyond the window go."""
        self.recent.update(self.staged)
        self.staged = {}
        if len(self.recent) < self.block:
            return
        keys = np.fromiter(self.recent.keys(), dtype=np.int64, count=len(self.recent))
        order = np.argsort(keys, kind="stable")
        self.blocks.append((keys[order], np.array(list(self.recent.values()), dtype=np.bytes_)[order]))
        self.frozen += len(keys)
        self.recent = {}
        while self.blocks and self.frozen - len(self.blocks[0][0]) >= self.window:
            self.frozen -= len(self.blocks.pop(0)[0])

    def begin(self) -> None:
        """A transaction starts: what a failed one staged was never stored."""
        self.staged = {}

    def stored_ts(self, event_id: str) -> str | None:
        """The ts the index holds for ``event_id`` (None: not known)."""
        return self._lookup([_key(event_id)]).get(_key(event_id))

    def _lookup(self, keys: list[int]) -> dict[int, str]:
        """key -> stored ts of the keys the index holds (staged ones included)."""
        known: dict[int, str] = {}
        for source in (self.staged, self.recent):
            for k in source.keys() & keys if source else ():  # a set operation in C: hits are rare
                known[k] = source[k]
        if self.blocks:
            wanted = np.array(keys, dtype=np.int64)
            for block_keys, block_ts in self.blocks:
                at = np.searchsorted(block_keys, wanted)
                np.minimum(at, len(block_keys) - 1, out=at)
                for i in np.flatnonzero(block_keys[at] == wanted):
                    known[keys[i]] = block_ts[at[i]].decode()
        return known


async def _stored(conn: aiosqlite.Connection, table: str, event_id: str, ts: str) -> bool:
    """Whether ``table`` holds exactly (ts, event_id): confirms a hash hit, which may be a collision."""
    found = await conn.execute_fetchall(f"SELECT 1 FROM {table} WHERE ts = ? AND event_id = ?", (ts, event_id))
    return bool(list(found))
