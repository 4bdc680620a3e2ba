"""The sidecar's side of the database (its outbox): its own connection, WAL and busy_timeout.

Work per sink lives in ``delivery_state``: :meth:`Outbox.sync` takes the notifications a sink has
not seen yet (above its ``sink_cursor``) as ``pending`` (a sink seen for the first time takes only
the latest notification of each firing alert) and marks ``superseded`` what a later one replaces;
:meth:`Outbox.due` picks, per alert and in order, the ones to send now (``agent.store.sequencing``);
:meth:`Outbox.record` writes the attempts to ``deliveries`` and moves each notification to
``delivered``, ``dead`` or a later ``next_attempt_at`` in one transaction.
A notification is ``delivered`` only once its sink confirmed it, and that is committed before the
next round, so a restart (kill -9 included) re-sends only what was not confirmed.

When the disk is full the sidecar still sends: a round whose record cannot be committed is held
in memory (its notifications are not sent again meanwhile) and committed, in order, as soon as
the database takes writes again (:meth:`Outbox.flush_held`); only a restart before that re-sends
them, with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import orjson
from loguru import logger

from agent.alerts import AlertRules, Observation
from agent.config import AlertSettings
from agent.events import iso
from agent.exceptions import StoreError
from agent.store.alerts import apply_rules
from agent.store.connection import open_writer
from agent.store.sequencing import DUE, Policy, supersede

log = logger.bind(component="sidecar")
Rows = tuple[Any, ...]


@dataclass(slots=True)
class Item:
    """One pending notification for one sink."""

    id: int
    key: str
    transition: str
    alert: dict[str, Any]
    created_at: str
    attempts: int

    def message(self) -> dict[str, Any]:
        """The notification as every sink receives it; ``id`` is the idempotency key."""
        return {"id": self.key, "alert": self.alert, "transition": self.transition,
                "created_at": self.created_at}  # fmt: skip


@dataclass(slots=True)
class Attempt:
    """One try of one notification on one sink, and where it leaves the notification."""

    item: Item
    status: str  # delivered, dead, retry, failed, unauthorized
    started_at: float
    finished_at: float
    error: str | None = None
    http: dict[str, Any] = field(default_factory=dict)
    next_attempt_at: float | None = None  # for a notification still pending after this round


_DELIVERY_COLUMNS = (
    "http_status", "request_id", "client_request_id", "fe_server", "be_server", "diag_info",
    "diag_error_id", "diag_reason", "diag_error_type", "latency_ms",
)  # fmt: skip
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (sink, notification_id, attempt, status, error, started_at, finished_at, "
    + ", ".join(_DELIVERY_COLUMNS)
    + ") VALUES ("
    + ", ".join("?" * (7 + len(_DELIVERY_COLUMNS)))
    + ")"
)


class Outbox:
    """The sidecar's connection; one transaction at a time across its tasks."""

    def __init__(self, conn: aiosqlite.Connection, alerts: AlertSettings) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.alerts = AlertRules(alerts, frozenset({"sidecar"}))
        self._closed = False
        #: Rounds sent but not yet recorded (the disk was full), per sink, oldest first.
        self._held: dict[str, list[tuple[list[Rows], list[Rows], list[Rows]]]] = {}
        self._refused: set[str] = set()
        self._flushing: dict[str, asyncio.Lock] = {}

    @classmethod
    async def open(cls, path: Path, alerts: AlertSettings, busy_timeout_ms: int = 30_000) -> Outbox:
        return cls(await open_writer(path, busy_timeout_ms), alerts)

    async def close(self) -> None:
        """Record what is still held if the database takes it now (else it is sent again next start)."""
        if not self._closed:
            for sink in list(self._held):
                await self.flush_held(sink)
            self._closed = True
            await self._conn.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; a database error (disk full, locked) becomes a StoreError."""
        async with self._lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                await self._conn.commit()
            except BaseException as exc:
                if self._conn.in_transaction:
                    await self._conn.rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"cannot write to the database: {exc}") from exc
                raise

    async def sync(self, sinks: Mapping[str, Policy]) -> int:
        """Take notifications newer than each sink's cursor as pending; return how many.

        A sink without a cursor is new: it takes the latest notification of each firing alert (the
        current state of what is open) and nothing already resolved; its cursor is written at once,
        even on an empty outbox, so it is new only once. Then what a later notification replaces
        under the sink's policy is marked superseded (``agent.store.sequencing``).
        """
        now = iso(time.time())
        added = 0
        async with self._transaction() as conn:
            top = await conn.execute_fetchall("SELECT coalesce(max(id), 0) FROM notifications")
            newest = int(next(iter(top))[0])
            for sink, policy in sinks.items():
                rows = list(await conn.execute_fetchall(
                    "SELECT last_id FROM sink_cursor WHERE sink = ?", (sink,)))  # fmt: skip
                if rows and newest <= int(rows[0][0]):
                    continue
                if rows:
                    cursor = await conn.execute(
                        "INSERT OR IGNORE INTO delivery_state (sink, notification_id, alert_id, state, attempts,"
                        " next_attempt_at, updated_at) SELECT ?, id, alert_id, 'pending', 0, ?, ?"
                        " FROM notifications WHERE id > ? AND id <= ?",
                        (sink, iso(0), now, int(rows[0][0]), newest),
                    )
                else:
                    cursor = await conn.execute(
                        "INSERT OR IGNORE INTO delivery_state (sink, notification_id, alert_id, state, attempts,"
                        " next_attempt_at, updated_at) SELECT ?, max(n.id), a.id, 'pending', 0, ?, ?"
                        " FROM alerts a JOIN notifications n ON n.alert_id = a.id"
                        " WHERE a.state = 'firing' AND n.id <= ? GROUP BY a.id",
                        (sink, iso(0), now, newest),
                    )
                    if newest:
                        log.info("sink {} is new: it gets the latest notification of the {} firing alert(s),"
                                 " not the whole outbox", sink, max(cursor.rowcount, 0))  # fmt: skip
                added += max(cursor.rowcount, 0)
                if cursor.rowcount:
                    await conn.execute(supersede(policy), (now, sink))
                await conn.execute(
                    "INSERT INTO sink_cursor (sink, last_id, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (sink) DO UPDATE SET last_id = excluded.last_id,"
                    " updated_at = excluded.updated_at",
                    (sink, newest, now),
                )
        return added

    async def due(self, sink: str, limit: int = 1000, now: float | None = None) -> list[Item]:
        """What ``sink`` should be sent now: per alert, the oldest pending notification, if its next
        attempt has come; oldest first. A held round (sent, not recorded yet) decides for its own."""
        when = iso(time.time() if now is None else now)
        async with self._lock:
            rows = await self._conn.execute_fetchall(DUE, (sink, when, limit))
        held = self._held_states(sink)
        items = []
        for r in rows:
            state, attempts, next_at = held.get(r[0], ("pending", r[5], ""))
            if state == "pending" and next_at <= when:
                items.append(Item(r[0], r[1], r[2], orjson.loads(r[3]), r[4], attempts))
        return items

    async def record(self, sink: str, attempts: list[Attempt], park_until: float) -> None:
        """Write the attempts of one round and each notification's new state, atomically.

        A notification still pending after the round waits until its own ``next_attempt_at``
        or ``park_until``.
        """
        if not attempts:
            return
        now = iso(time.time())
        final: dict[int, Attempt] = {}
        rows = []
        for a in attempts:
            a.item.attempts += 1
            final[a.item.id] = a
            http = [a.http.get(c) for c in _DELIVERY_COLUMNS]
            rows.append((sink, a.item.id, a.item.attempts, a.status, a.error, iso(a.started_at),
                         iso(a.finished_at), *http))  # fmt: skip
        done, again = [], []
        for a in final.values():
            later = iso(a.next_attempt_at or park_until)
            row = (a.item.attempts, later, a.error, now, sink, a.item.id)
            if a.status in ("delivered", "dead"):
                done.append((a.status, *row))
            else:
                again.append(row)
        self._held.setdefault(sink, []).append((rows, done, again))
        await self.flush_held(sink)

    def held(self, sink: str | None = None) -> int:
        """Delivery attempts sent but not yet recorded (for ``sink``, or every sink)."""
        rounds = [r for name, v in self._held.items() if sink in (None, name) for r in v]
        return sum(len(rows) for rows, _, _ in rounds)

    def _held_states(self, sink: str) -> dict[int, tuple[str, int, str]]:
        """Each held notification's latest (state, attempts, next_attempt_at): what the database will say."""
        states: dict[int, tuple[str, int, str]] = {}
        for _, done, again in self._held.get(sink, []):
            states |= {int(u[-1]): (u[0], u[1], u[2]) for u in done}
            states |= {int(u[-1]): ("pending", u[0], u[1]) for u in again}
        return states

    async def flush_held(self, sink: str) -> bool:
        """Commit the held rounds of ``sink``, oldest first; False if the database still refuses."""
        async with self._flushing.setdefault(sink, asyncio.Lock()):
            rounds = list(self._held.get(sink, []))
            if not rounds:
                return True
            try:
                async with self._transaction() as conn:
                    for rows, done, again in rounds:
                        await conn.executemany(_INSERT_DELIVERY, rows)
                        await conn.executemany(
                            "UPDATE delivery_state SET state = ?, attempts = ?, next_attempt_at = ?, reason = ?,"
                            " updated_at = ? WHERE sink = ? AND notification_id = ?",
                            done,
                        )
                        # Still pending, unless superseded while it was in flight: then it stays superseded.
                        await conn.executemany(
                            "UPDATE delivery_state SET attempts = ?, next_attempt_at = ?, reason = ?, updated_at = ?"
                            " WHERE sink = ? AND notification_id = ? AND state = 'pending'",
                            again,
                        )
            except StoreError as exc:
                self._refused.add(sink)
                msg = "holding the deliveries sent in memory (none is sent twice) until the database takes writes"
                log.bind(sink=sink).error("{}: {}", exc, msg)
                return False
            # Rounds held while this one committed stay for the next flush.
            self._held[sink] = self._held[sink][len(rounds) :]
            if sink in self._refused:
                self._refused.discard(sink)
                log.bind(sink=sink).info("recorded {} held delivery attempt(s)", sum(len(r) for r, _, _ in rounds))
            return True

    async def observe(self, observations: Iterable[Observation]) -> int:
        """Raise or resolve the sidecar's own alerts (agent down, sink failing); notifications made."""
        for obs in observations:
            self.alerts.observe(obs)
        try:
            async with self._transaction() as conn:
                made = await apply_rules(conn, self.alerts)
        except BaseException:
            self.alerts.rollback()
            raise
        self.alerts.committed()
        return made

    async def heartbeat(self) -> str | None:
        """The agent's last heartbeat, or None if it never wrote one."""
        async with self._lock:
            rows = list(await self._conn.execute_fetchall(
                "SELECT value FROM agent_state WHERE key = 'heartbeat'"))  # fmt: skip
        return rows[0][0] if rows else None

    async def firing(self) -> list[dict[str, Any]]:
        """The latest notification snapshot of each firing alert (for re-posting)."""
        async with self._lock:
            rows = await self._conn.execute_fetchall(
                "SELECT n.alert, n.key, n.transition, n.created_at FROM alerts a"
                " JOIN notifications n ON n.id = (SELECT max(id) FROM notifications"
                " WHERE alert_id = a.id) WHERE a.state = 'firing'"
            )
        return [{"id": r[1], "alert": orjson.loads(r[0]), "transition": r[2], "created_at": r[3]}
                for r in rows]  # fmt: skip

    async def is_firing(self, code: str, api: str = "") -> bool:
        """Whether the sidecar's alert ``code`` (for sink ``api``) is firing."""
        async with self._lock:
            rows = list(await self._conn.execute_fetchall(
                "SELECT 1 FROM alerts WHERE source = 'sidecar' AND app = '' AND code = ? AND api = ?"
                " AND state = 'firing'", (code, api)))  # fmt: skip
        return bool(rows)
