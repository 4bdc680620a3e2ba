"""Retention in SQL: one prune pass, deleting old rows in small steps between the writer's commits.

A pass deletes, oldest first, ``events`` and ``api_calls`` whose ``ts`` is before the history
cutoff, ``state_changes`` received before it, ``quarantine`` rows received before the quarantine
cutoff, and notifications created before the deliveries cutoff that every sink is done with (with
their ``delivery_state`` and ``deliveries`` rows); then it hands the freed pages back to the file
system (``incremental_vacuum``). A row the NATS forwarder has not had acknowledged is never
deleted (``agent.store.changes.retention_guard``). Each step is one short transaction sized to
take about ``STEP_SECONDS``, so the stream's commits never wait long behind it
(``agent.store.upkeep`` runs the steps between commits). State tables are never pruned by age.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import aiosqlite

from agent.store.changes import retention_guard

#: The time one step aims at: the stream's next commit waits at most about this long behind it.
STEP_SECONDS = 0.004
MIN_LIMIT, MAX_LIMIT = 16, 20_000

Job = Callable[[aiosqlite.Connection, int], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Rows older than these (store time format) go; None keeps that kind forever."""

    history: str | None
    quarantine: str | None
    deliveries: str | None
    #: Sinks that must be done with a notification before it goes: configured and seen by the sidecar.
    sinks: frozenset[str] = frozenset()


async def prune_history(conn: aiosqlite.Connection, cutoff: str, limit: int) -> int:
    """Delete up to ``limit`` history rows (``events``, then ``api_calls``) whose ``ts`` is before ``cutoff``.

    The one place history is pruned: a table that de-duplicates history by event identity must
    be pruned here, with the same cutoff, so that pruning never reopens the door to a duplicate
    (an arrival older than the cutoff is not stored at all: agent.store.upkeep).
    """
    deleted = 0
    await conn.execute("BEGIN IMMEDIATE")
    try:
        for table in ("events", "api_calls"):
            cursor = await conn.execute(
                f"DELETE FROM {table} WHERE id IN"
                f" (SELECT id FROM {table} WHERE ts < ? AND {retention_guard(table)} ORDER BY ts LIMIT ?)",
                (cutoff, limit - deleted),
            )
            deleted += max(cursor.rowcount, 0)
            if deleted >= limit:
                break
        await conn.commit()
    except BaseException:
        await conn.rollback()
        raise
    return deleted


async def prune_state_changes(conn: aiosqlite.Connection, cutoff: str, limit: int) -> int:
    """Delete state changes received before ``cutoff``, among the ``limit`` oldest by id.

    The triggers write ``state_changes`` whether or not forwarding is on; ids follow arrival order,
    so the oldest by id are the ones to look at, and what the forwarder has not sent stays.
    """
    cursor = await conn.execute(
        "DELETE FROM state_changes WHERE id IN (SELECT id FROM state_changes"
        f" WHERE {retention_guard('state_changes')} ORDER BY id LIMIT ?) AND received_at < ?",
        (limit, cutoff),
    )
    return max(cursor.rowcount, 0)


async def prune_quarantine(conn: aiosqlite.Connection, cutoff: str, limit: int) -> int:
    """Delete quarantined rows received before ``cutoff``, among the ``limit`` oldest by id."""
    cursor = await conn.execute(
        "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine ORDER BY id LIMIT ?) AND received_at < ?",
        (limit, cutoff),
    )
    return max(cursor.rowcount, 0)


async def prune_notifications(conn: aiosqlite.Connection, cutoff: str, sinks: Iterable[str], limit: int) -> int:
    """Delete notifications created before ``cutoff`` that every sink is done with, and their delivery rows.

    Done means: every sink (configured, or known to the sidecar's ``sink_cursor``) has taken the
    notification into its work and none still has it pending. The newest notification of each
    alert stays (the sidecar re-posts firing alerts from it).
    """
    await conn.execute("BEGIN IMMEDIATE")
    try:
        rows = await conn.execute_fetchall("SELECT sink, last_id FROM sink_cursor")
        cursors: dict[str, int] = {str(row[0]): int(row[1]) for row in rows}
        every = set(cursors) | set(sinks)
        floor = min((cursors.get(sink, 0) for sink in every), default=None)
        rows = await conn.execute_fetchall(
            "SELECT id FROM notifications WHERE id <= coalesce(?, id) AND created_at < ?"
            " AND id NOT IN (SELECT notification_id FROM delivery_state WHERE state = 'pending')"
            " AND id NOT IN (SELECT max(id) FROM notifications GROUP BY alert_id)"
            f" AND {retention_guard('notifications')} ORDER BY id LIMIT ?",
            (floor, cutoff, limit),
        )
        ids = [int(row[0]) for row in rows]
        if ids:
            marks = ", ".join("?" * len(ids))
            await conn.execute(f"DELETE FROM deliveries WHERE notification_id IN ({marks})", ids)
            await conn.execute(
                "DELETE FROM delivery_state WHERE sink IN (SELECT sink FROM sink_cursor)"
                f" AND notification_id IN ({marks})",
                ids,
            )
            await conn.execute(f"DELETE FROM notifications WHERE id IN ({marks})", ids)
        await conn.commit()
    except BaseException:
        await conn.rollback()
        raise
    return len(ids)


async def incremental_vacuum(conn: aiosqlite.Connection, pages: int) -> int:
    """Give up to ``pages`` free pages back to the file system; return how many were freed.

    ``executescript`` steps the pragma to its end: ``execute`` would free a single page.
    """
    before = await freelist_count(conn)
    if before == 0:
        return 0
    await conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
    return before - await freelist_count(conn)


async def freelist_count(conn: aiosqlite.Connection) -> int:
    return int(next(iter(await conn.execute_fetchall("PRAGMA freelist_count")))[0])


async def auto_vacuum_mode(conn: aiosqlite.Connection) -> int:
    """0 none, 1 full, 2 incremental."""
    return int(next(iter(await conn.execute_fetchall("PRAGMA auto_vacuum")))[0])


@dataclass
class Pass:
    """One prune pass: its jobs in order, each run in steps sized to about ``STEP_SECONDS``."""

    jobs: list[tuple[str, Job]]
    done: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _limits: dict[str, int] = field(default_factory=dict)

    @classmethod
    def plan(cls, cutoffs: Cutoffs, vacuum: bool) -> Pass:
        jobs: list[tuple[str, Job]] = []
        if cutoffs.history is not None:
            history = cutoffs.history
            jobs.append(("history", lambda conn, n: prune_history(conn, history, n)))
            jobs.append(("state_changes", lambda conn, n: prune_state_changes(conn, history, n)))
        if cutoffs.quarantine is not None:
            quarantine = cutoffs.quarantine
            jobs.append(("quarantine", lambda conn, n: prune_quarantine(conn, quarantine, n)))
        if cutoffs.deliveries is not None:
            deliveries, sinks = cutoffs.deliveries, cutoffs.sinks
            jobs.append(("notifications", lambda conn, n: prune_notifications(conn, deliveries, sinks, n)))
        if vacuum:
            jobs.append(("pages", incremental_vacuum))
        return cls(jobs)

    @property
    def finished(self) -> bool:
        return not self.jobs

    async def step(self, conn: aiosqlite.Connection) -> None:
        """Run one step of the current job; a step that does less than it was allowed ends the job."""
        name, job = self.jobs[0]
        limit = self._limits.get(name, 256 if name == "pages" else 1000)
        started = time.perf_counter()
        count = await job(conn, limit)
        elapsed = time.perf_counter() - started
        self.done[name] = self.done.get(name, 0) + count
        if count < limit:
            self.jobs.pop(0)
            return
        # Size the next step to take about STEP_SECONDS, changing by at most 2x at a time.
        scale = min(2.0, max(0.5, STEP_SECONDS / max(elapsed, 1e-6)))
        self._limits[name] = int(min(MAX_LIMIT, max(MIN_LIMIT, limit * scale)))
