"""WAL checkpoints, mostly on a connection of their own, so that the writer rarely copies the WAL itself.

A checkpoint writes the WAL's pages into the database file and syncs both: tens of milliseconds
for a few MB, during which the connection running it can do nothing else. SQLite's automatic
checkpoint runs inside the commit that crossed ``wal_autocheckpoint``, on the writer's connection,
so the stream's next commit would wait behind it (and a prune pass writes many pages).

Here :class:`Checkpointer` copies the bulk with ``wal_checkpoint(PASSIVE)`` in its own
connection's thread while the writer goes on committing. The WAL can only start over when a
writer begins with every frame copied, which a concurrent checkpoint never sees under a steady
stream; so once a background run finds ``RESET_FRAMES`` frames or more, the writer runs a PASSIVE
checkpoint itself (:meth:`Checkpointer.reset_wanted`): it copies only what that run left (what
was committed while it ran), and its next transaction starts the WAL over. The writer's automatic
checkpoint stays as a backstop at ``BACKSTOP_PAGES``. At quiet moments a WAL file grown past
``WAL_LIMIT_BYTES`` is checkpointed with ``RESTART`` (waiting briefly for readers), after which
``journal_size_limit`` truncates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

import aiosqlite
from loguru import logger

from agent.store.connection import WAL_LIMIT_BYTES

log = logger.bind(component="store")

#: The writer checkpoints by itself only if the checkpointer falls this far behind (4 KiB pages).
BACKSTOP_PAGES = 16_384
#: WAL frames (4 KiB pages, 16 MB) after which the writer starts the WAL over.
RESET_FRAMES = 4096


#: How long a RESTART waits for readers (and holds new writes back) before giving up.
RESTART_WAIT_MS = 100


async def checkpoint(conn: aiosqlite.Connection, restart: bool = False) -> tuple[int, int, int]:
    """``wal_checkpoint(PASSIVE)`` or ``RESTART``: SQLite's (busy, WAL frames, frames checkpointed)."""
    row = next(iter(await conn.execute_fetchall(f"PRAGMA wal_checkpoint({'RESTART' if restart else 'PASSIVE'})")))
    return int(row[0]), int(row[1]), int(row[2])


class Checkpointer:
    """Background PASSIVE checkpoints for one database; one run at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Largest WAL file seen (bytes), for benchmarks.
        self.wal_peak = 0
        self.runs = 0
        self._reset = False
        self._seen: tuple[int, int] | None = None

    def wal_size(self) -> int:
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0
        self.wal_peak = max(self.wal_peak, size)
        return size

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, quiet: bool = False) -> None:
        """Start a run in the background unless one is under way or nothing was written since the last one.

        ``quiet``: the writer is idle.
        """
        if self._closed or self.running:
            return
        try:
            st = os.stat(f"{self.path}-wal")
        except OSError:
            return
        if (st.st_mtime_ns, st.st_size) == self._seen:
            return  # an idle agent costs no checkpoint
        self._seen = (st.st_mtime_ns, st.st_size)
        restart = quiet and self.wal_size() > WAL_LIMIT_BYTES
        self._task = asyncio.create_task(self._run(restart), name="xmppmon-checkpoint")

    async def _run(self, restart: bool) -> None:
        try:
            if self._conn is None:
                self._conn = await aiosqlite.connect(self.path, isolation_level=None)
                await self._conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
            busy, frames, _ = await checkpoint(self._conn, restart=restart)
            # The writer copies what this run could not (what came during it) and starts the WAL over.
            self._reset = not restart and not busy and frames >= RESET_FRAMES
            self.runs += 1
        except (sqlite3.Error, OSError) as exc:
            log.warning("WAL checkpoint failed ({}); the writer's own checkpoint covers meanwhile", exc)

    def reset_wanted(self) -> bool:
        """True once after a run found a WAL of ``RESET_FRAMES`` or more: the writer should checkpoint now."""
        wanted, self._reset = self._reset and not self.running, False
        return wanted

    async def close(self) -> None:
        """Wait for a run under way and close the connection; idempotent."""
        self._closed = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                await self._conn.close()
            self._conn = None
