"""Keyset paging: a table's rows in key order, a chunk at a time, each chunk its own short read.

The next chunk starts after the last key read (on the table's unique key), so each row comes at
most once, and a long reader (an export) never holds one read transaction open, which would keep
the WAL from being checkpointed and let it grow for as long as the reader runs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any


def keyset_chunks(
    conn: sqlite3.Connection,
    table: str,
    columns: tuple[str, ...],
    keys: tuple[str, ...],
    chunk: int,
    where: str = "",
    params: tuple[Any, ...] = (),
    first_key_from: bool = False,
) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of ``table`` matching ``where`` ordered by ``keys`` (all in ``columns``), ``chunk`` at a time.

    With ``first_key_from``, ``params[0]`` is the lower bound of the first key: later chunks start
    it at the last value read, so the index search skips what was read.
    """
    select = f"SELECT {', '.join(columns)} FROM {table}"
    order = f" ORDER BY {', '.join(keys)} LIMIT {int(chunk)}"
    positions = [columns.index(k) for k in keys]
    after: tuple[Any, ...] | None = None
    while True:
        if after is None:
            rows = conn.execute(select + (f" WHERE {where}" if where else "") + order, params).fetchall()
        else:
            bound = (after[0], *params[1:]) if first_key_from else params
            after_keys = f"({', '.join(keys)}) > ({', '.join('?' * len(keys))})"
            rows = conn.execute(
                select + f" WHERE {where + ' AND ' if where else ''}{after_keys}" + order, (*bound, *after)
            ).fetchall()
        if not rows:
            return
        yield rows
        after = tuple(rows[-1][i] for i in positions)
