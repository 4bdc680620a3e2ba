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

Layout (numpy): the ids of the latest commits sit in a dict; every ``window / 8`` of them freeze
into a block (sorted int64 keys, their ts, and a Bloom filter in front: 34 bytes an id); the oldest
block is forgotten once the window is full. A lookup asks each block's filter first, so a new id,
the usual case, costs a few array reads per block. An attached in-memory SQLite table did the same
job before: every id a random B-tree insert, 7 us an id on a fresh index and 22-35 us once a
million ids were held, against 3-9 us for these blocks (measured side by side on a loaded machine),
and the writer's rate in ``bench/pipeline.py`` fell to about half.

The window is bounded (``store.identity_window`` ids: about 45 MB for a million, 65 MB while a
block freezes): the newest ``window`` ids are always recognised, older ones (up to a block more)
may be forgotten. On start, the index is filled from the newest rows of ``events`` and
``api_calls``.
"""

from __future__ import annotations

from typing import Any

import aiosqlite
import numpy as np

_BLOCKS = 8  # a window is this many blocks: what is forgotten at once is 1/8 of it
_MAX_BLOCK = 131_072
_CHUNK = 10_000  # rows read at a time when the index is filled at start


def _key(event_id: str) -> int:
    # Python's str hash: computed in C and cached on the string, a signed 64-bit value. It differs
    # between processes, which is fine for an index rebuilt by every process.
    return hash(event_id)


class _Block:
    """Frozen ids: sorted keys with their ts, and a Bloom filter (3 probes, 16 bits an id) in front.

    Most ids looked up are new: the filter turns them away with a few array reads each, so only
    the rare candidates are searched for, and the cost of a lookup hardly grows with the window.
    """

    __slots__ = ("bits", "keys", "mask", "ts")

    def __init__(self, ids: dict[int, str]) -> None:
        keys = np.fromiter(ids.keys(), dtype=np.int64, count=len(ids))
        order = np.argsort(keys)
        self.keys, self.ts = keys[order], np.array(list(ids.values()), dtype=np.bytes_)[order]
        size = 1 << max(6, (16 * len(keys) - 1).bit_length())  # bits, a power of two
        self.mask = np.uint64(size - 1)
        self.bits = np.zeros(size // 8, dtype=np.uint8)
        for probe in self._probes(self.keys):
            np.bitwise_or.at(self.bits, probe >> np.uint64(3), np.left_shift(1, probe & np.uint64(7)).astype(np.uint8))

    def __len__(self) -> int:
        return len(self.keys)

    def _probes(self, keys: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
        # Three 21-bit fields of the 64-bit hash: independent enough for a SipHash value.
        u = keys.view(np.uint64)
        return [(u >> np.uint64(shift)) & self.mask for shift in (0, 21, 42)]

    def find(self, wanted: np.ndarray[Any, Any]) -> list[tuple[int, str]]:
        """(key, ts) of the ``wanted`` keys (sorted, unique) this block holds."""
        maybe = np.ones(len(wanted), dtype=bool)
        for probe in self._probes(wanted):
            maybe &= ((self.bits[probe >> np.uint64(3)] >> (probe & np.uint64(7)).astype(np.uint8)) & 1).astype(bool)
        if not maybe.any():
            return []
        candidates = wanted[maybe]
        at = np.minimum(np.searchsorted(self.keys, candidates), len(self.keys) - 1)
        return [(int(candidates[i]), self.ts[at[i]].decode()) for i in np.flatnonzero(self.keys[at] == candidates)]


class Identity:
    """The ids the store holds (within a window), for the same id arriving with another ts."""

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self.block = max(1, min(_MAX_BLOCK, self.window // _BLOCKS))
        self.recent: dict[int, str] = {}  # committed, not yet frozen
        self.staged: dict[int, str] = {}  # this transaction's new ids: recent once it commits
        self.blocks: list[_Block] = []  # oldest first
        self.frozen = 0  # ids in blocks

    def __len__(self) -> int:
        return self.frozen + len(self.recent)

    async def attach(self, conn: aiosqlite.Connection) -> None:
        """Fill the index from the newest ``window`` rows of each table, oldest first (as if stored in
        order), a chunk at a time: reading them all at once took a restarted agent to 293 MB."""
        for table in ("api_calls", "events"):
            async with conn.execute(
                f"SELECT event_id, ts FROM {table} WHERE id > (SELECT coalesce(max(id), 0) FROM {table}) - ?"
                " ORDER BY id", (self.window,),
            ) as cursor:  # fmt: skip
                while rows := await cursor.fetchmany(_CHUNK):
                    for event_id, ts in rows:
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
        self.blocks.append(_Block(self.recent))
        self.frozen += len(self.recent)
        self.recent = {}
        while self.blocks and self.frozen - len(self.blocks[0]) >= self.window:
            self.frozen -= len(self.blocks.pop(0))

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
            if source:  # not ``source.keys() & keys``: that copies the whole dict into a set first
                known.update((k, source[k]) for k in keys if k in source)
        if self.blocks:
            wanted = np.unique(np.array(keys, dtype=np.int64))
            for block in self.blocks:
                known.update(block.find(wanted))
        return known


async def _stored(conn: aiosqlite.Connection, table: str, event_id: str, ts: str) -> bool:
    """Whether ``table`` holds exactly (ts, event_id): confirms a hash hit, which may be a collision."""
    found = await conn.execute_fetchall(f"SELECT 1 FROM {table} WHERE ts = ? AND event_id = ?", (ts, event_id))
    return bool(list(found))
