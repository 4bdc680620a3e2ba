"""The only module that writes SQL: schema migrations, and the one writer task with group commit.

Plugins hand validated events to :meth:`Store.submit_events`; the writer task collects them and
commits them in batches (at ``batch_size`` records or after ``flush_ms``), in WAL mode with
``synchronous=NORMAL``. :meth:`Store.barrier` resolves once everything submitted before it is
committed, and records the XEP-0198 position it covers in the same transaction, which is how the
session acknowledges to the server only what is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
from loguru import logger

from agent.alerts import AlertEngine, Observation
from agent.config import AlertSettings, StoreSettings
from agent.events import HISTORY_KINDS, Event, dumps_value, utc_now
from agent.exceptions import StoreClosedError, StoreError
from agent.schema import MIGRATIONS, SCHEMA_VERSION

log = logger.bind(component="store")

_INSERT_EVENT = "INSERT OR IGNORE INTO events (event_id, app, kind, ts, payload, received_at) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_API = (
    "INSERT OR IGNORE INTO api_calls (event_id, app, ts, api, method, path, status, request_id,"
    " latency_ms, detail, payload, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _upsert(table: str, key: tuple[str, ...], columns: tuple[str, ...]) -> str:
    names = key + columns + ("ts", "event_id", "received_at")
    updates = ", ".join(f"{name} = excluded.{name}" for name in names[len(key) :])
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        f" WHERE excluded.ts >= {table}.ts"
    )


_UPSERT = {
    "device": _upsert("devices", ("app", "device_id"), ("payload",)),
    "tag": _upsert("tags", ("app", "device_id", "name"), ("value",)),
    "token": _upsert("tokens", ("app", "device_id"), ("token", "valid")),
    "push": _upsert("push_feedback", ("app", "device_id", "campaign_id"), ("action",)),
}
_INSERT_QUARANTINE = (
    "INSERT INTO quarantine (reason, raw, sender, event_id, app, received_at) VALUES (?, ?, ?, ?, ?, ?)"
)
_BUMP_COUNTER = (
    "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
_SET_STATE = (
    "INSERT INTO agent_state (key, value, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)


@dataclass(slots=True)
class _Mark:
    """A barrier: resolved when everything submitted before it is committed."""

    future: asyncio.Future[None]
    sm_id: str | None
    handled: int | None


@dataclass(slots=True)
class Quarantined:
    reason: str
    raw: str
    sender: str | None
    event_id: str | None
    app: str | None
    received_at: str


def create_private_file(path: Path) -> None:
    """Create the database file owner-read-write, group-read, before SQLite does.

    SQLite gives the ``-wal`` and ``-shm`` files the permissions of the database file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))


def connect_readonly(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection for the CLI and the sidecar's reads; never blocks the writer."""
    if not path.exists():
        raise StoreError(f"database {path} does not exist: has the agent run with this path?")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path} read-only: {exc}") from None
    conn.row_factory = sqlite3.Row
    return conn


async def migrate(conn: aiosqlite.Connection) -> int:
    """Apply the migrations the database lacks; return the schema version."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    async with conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {current} is newer than this xmppmon ({SCHEMA_VERSION}): upgrade xmppmon"
        )
    for version, name, script in MIGRATIONS:
        if version <= current:
            continue
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: the agent and the sidecar may start together on a
            # new database, and only one of them must apply each migration.
            async with conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations") as cursor:
                row = await cursor.fetchone()
            if row and int(row[0]) >= version:
                await conn.commit()
                continue
            for statement in _statements(script):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, utc_now()),
            )
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
        log.info("applied migration {} ({})", version, name)
    return SCHEMA_VERSION


async def open_writer(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    """A writing connection, private file mode, WAL, synchronous=NORMAL, busy_timeout, migrated.

    The agent's store and the sidecar's outbox each open one; StoreError says what went wrong.
    """
    try:
        create_private_file(path)
        conn = await aiosqlite.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
            mode = await cursor.fetchone()
        if not mode or mode[0].lower() != "wal":
            raise StoreError(f"database {path} cannot use WAL mode (got {mode})")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await migrate(conn)
    except sqlite3.Error as exc:
        await conn.close()
        raise StoreError(f"cannot prepare database {path}: {exc}") from None
    except BaseException:
        await conn.close()
        raise
    return conn


def _statements(script: str) -> Iterable[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""


class Store:
    """The agent's database: one connection, one writer task, group commit."""

    def __init__(
        self, settings: StoreSettings, conn: aiosqlite.Connection, alerts: AlertSettings | None = None
    ) -> None:
        self.settings = settings
        #: Alert rules, evaluated in the transaction of the events that caused them (agent.alerts).
        self.alerts = AlertEngine(alerts or AlertSettings(), frozenset({"api", "subscription", "session", "store"}))
        self._conn = conn
        self._events: list[tuple[Event, str]] = []
        self._quarantine: list[Quarantined] = []
        self._counters: Counter[str] = Counter()
        self._state: dict[str, str | None] = {}
        self._marks: list[_Mark] = []
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._last_heartbeat = 0.0
        #: False while commits fail (disk full, database locked beyond busy_timeout).
        self.healthy = True
        self.last_error: str | None = None
        #: Monotonic time of the last successful commit.
        self.last_commit = time.monotonic()
        #: For the watchdog: when the write in progress started (None between writes), and when
        #: the last one ended, committed or not. A writer that keeps failing still cycles.
        self.write_started: float | None = None
        self.last_attempt = time.monotonic()
        self.committed_events = 0
        #: Arrival-to-commit latency of each submitted stanza, in seconds, when a benchmark asks for
        #: it (set to a deque); None in production, where it would cost a list append per stanza.
        self.latencies: deque[float] | None = None
        self._arrivals: list[float] = []
        #: Called with True when the backlog passes ``high_water`` and False once it drains.
        self.backpressure: Callable[[bool], None] | None = None
        self.high_water = max(50 * settings.batch_size, 100_000)
        self._over = False

    @classmethod
    async def open(cls, settings: StoreSettings, alerts: AlertSettings | None = None) -> Store:
        """Open (creating if needed) and migrate the database, and start the writer task."""
        path = settings.path
        conn = await open_writer(path, settings.busy_timeout_ms)
        store = cls(settings, conn, alerts)
        store._task = asyncio.create_task(store._run(), name="xmppmon-store-writer")
        log.info("database {} open (schema version {})", path, SCHEMA_VERSION)
        return store

    # -- what plugins and the session call (synchronous, never awaits) ------------------------

    @property
    def pending(self) -> int:
        """Records waiting for the next commit."""
        return len(self._events) + len(self._quarantine)

    def submit_events(self, events: list[Event], received_at: str) -> None:
        self._check_open()
        self._events.extend((event, received_at) for event in events)
        if self.latencies is not None:
            self._arrivals.append(time.perf_counter())
        self._poke()

    def submit_quarantine(self, item: Quarantined) -> None:
        self._check_open()
        self._quarantine.append(item)
        self._counters["quarantined"] += 1
        self._poke()

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a persistent counter; written with the next commit."""
        self._counters[name] += amount
        self._wake.set()

    def set_state(self, key: str, value: object) -> None:
        """Record an ``agent_state`` value; written with the next commit."""
        self._state[key] = None if value is None else str(value)
        self._wake.set()

    def observe(
        self,
        source: str,
        code: str,
        *,
        app: str = "",
        api: str = "",
        ok: bool = False,
        detail: str | None = None,
    ) -> None:
        """Record a session-health observation for the alert rules; written with the next commit.

        ``ok=True`` says (source, app, api) is healthy again, which resolves its alerts.
        """
        self.alerts.observe(Observation(source, code, app, api, ok, detail))
        self._wake.set()

    def forget_stream(self) -> None:
        """The server discarded the XEP-0198 stream: never store its position again.

        Barriers still waiting carry the dead stream's id; without this, their commit would write
        it back after the state was cleared, and the next start would try to resume a dead stream.
        """
        for mark in self._marks:
            mark.sm_id = None
        self.set_state("sm_id", None)

    def barrier(self, sm_id: str | None = None, handled: int | None = None) -> asyncio.Future[None]:
        """A future resolved once everything submitted so far is committed.

        ``sm_id``/``handled`` (the XEP-0198 stream id and inbound count) are stored in the same
        transaction, so a new process resumes from a position whose events are all on disk.
        """
        self._check_open()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marks.append(_Mark(future, sm_id, handled))
        self._full.set()  # an acknowledgement is waiting: do not hold the batch open
        self._wake.set()
        return future

    def _poke(self) -> None:
        pending = len(self._events) + len(self._quarantine)
        if pending >= self.settings.batch_size:
            self._full.set()
            if pending >= self.high_water and not self._over:
                self._signal_backpressure(True)
        self._wake.set()

    def _signal_backpressure(self, over: bool) -> None:
        self._over = over
        if self.backpressure is not None:
            self.backpressure(over)

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise StoreClosedError("the store is closed")

    # -- the writer task ---------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.0
        while True:
            timeout = max(0.0, self._last_heartbeat + self.settings.heartbeat_seconds - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if not self._closing and not self._full.is_set():
                # Group commit: let a batch fill for flush_ms unless it is already full.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.settings.flush_ms / 1000)
            self._full.clear()
            if time.monotonic() - self._last_heartbeat >= self.settings.heartbeat_seconds:
                self._state["heartbeat"] = utc_now()
                self._last_heartbeat = time.monotonic()
            try:
                self.write_started = time.monotonic()
                await self._flush()
            except Exception as exc:
                self.write_started, self.last_attempt = None, time.monotonic()
                delay = min(max(delay * 2, 0.1), 5.0)
                if not isinstance(exc, sqlite3.Error | OSError):
                    # A bug, not the disk: say where, once, and keep retrying the same records.
                    log.opt(exception=exc).critical("unexpected error in the writer")
                self._failed(exc, delay)
                if self._closing and delay >= 5.0:
                    return  # nothing acknowledged is lost: the server redelivers the rest
                await asyncio.sleep(delay)
                self._wake.set()
                continue
            self.write_started, self.last_attempt = None, time.monotonic()
            delay = 0.0
            if self._closing and not self._has_work():
                return

    def _has_work(self) -> bool:
        return bool(
            self._events or self._quarantine or self._counters or self._state or self._marks or self.alerts.has_pending
        )

    def _failed(self, exc: BaseException, delay: float) -> None:
        message = f"cannot commit to {self.settings.path}: {exc}"
        if message != self.last_error:
            log.error("{}; holding {} record(s) and acknowledgements, retrying", message, self.pending)
            # Committed with the first write that succeeds: while the disk is full, the stale
            # heartbeat is what makes the sidecar raise "agent down" in the meantime.
            self.observe("store", "store_failing", detail=str(exc))
        self.healthy = False
        self.last_error = message

    async def _flush(self) -> None:
        events, self._events = self._events, []
        quarantine, self._quarantine = self._quarantine, []
        counters, self._counters = self._counters, Counter()
        state, self._state = self._state, {}
        marks, self._marks = self._marks, []
        arrivals, self._arrivals = self._arrivals, []
        if not (events or quarantine or counters or state or marks or self.alerts.has_pending):
            return
        try:
            inserted = await self._write(events, quarantine, counters, state, marks)
        except BaseException:
            # Put everything back in front of what arrived meanwhile, to retry in order.
            self._events = events + self._events
            self._quarantine = quarantine + self._quarantine
            self._counters.update(counters)
            self._state = state | self._state
            self._marks = marks + self._marks
            self._arrivals = arrivals + self._arrivals
            self.alerts.rollback()
            with contextlib.suppress(sqlite3.Error):
                await self._conn.rollback()
            raise
        self.committed_events += inserted
        if self._over and self.pending < self.high_water // 10:
            self._signal_backpressure(False)
        self.last_commit = time.monotonic()
        if not self.healthy:
            log.info("database writes recovered; committed {} pending record(s)", len(events))
            self.healthy, self.last_error = True, None
            self.observe("store", "store_failing", ok=True)
        for mark in marks:
            if not mark.future.done():
                mark.future.set_result(None)
        if self.latencies is not None:
            committed = time.perf_counter()
            self.latencies.extend(committed - arrived for arrived in arrivals)

    async def _write(
        self,
        events: list[tuple[Event, str]],
        quarantine: list[Quarantined],
        counters: Counter[str],
        state: dict[str, str | None],
        marks: list[_Mark],
    ) -> int:
        history: list[tuple[Any, ...]] = []
        api: list[tuple[Any, ...]] = []
        upserts: dict[str, list[tuple[Any, ...]]] = {}
        for event, received_at in events:
            kind, p = event.kind, event.payload
            if kind in HISTORY_KINDS:
                history.append((event.event_id, event.app, kind, event.ts, event.text, received_at))
            elif kind == "api":
                api.append((
                    event.event_id, event.app, event.ts, p["api"], p.get("method"), p.get("path"),
                    p["status"], p.get("request_id"), p.get("latency_ms"), p.get("detail"),
                    event.text, received_at,
                ))  # fmt: skip
            else:
                upserts.setdefault(kind, []).append(_state_row(event, received_at))
        conn = self._conn
        await conn.execute("BEGIN IMMEDIATE")
        appended = 0  # history and api rows really inserted: the rest were duplicates
        if history:
            cursor = await conn.executemany(_INSERT_EVENT, history)
            appended += max(cursor.rowcount, 0)
        api_total = len(api)
        if api:
            # Alerts count each call once: on a redelivery, count only the rows really inserted.
            await conn.execute("SAVEPOINT api")
            cursor = await conn.executemany(_INSERT_API, api)
            if max(cursor.rowcount, 0) < len(api):
                await conn.execute("ROLLBACK TO api")
                api = await self._new_api_rows(api)
                cursor = await conn.executemany(_INSERT_API, api)
            await conn.execute("RELEASE api")
            appended += max(cursor.rowcount, 0)
        if api or self.alerts.has_pending or self.alerts.sweep_due():
            await self.alerts.write(conn, Counter((r[1], r[3], r[6]) for r in api))
        for kind, rows in upserts.items():
            await conn.executemany(_UPSERT[kind], rows)
        if quarantine:
            await conn.executemany(
                _INSERT_QUARANTINE,
                [(q.reason, q.raw, q.sender, q.event_id, q.app, q.received_at) for q in quarantine],
            )
        duplicates = len(history) + api_total - appended
        if events:
            counters["events_received"] += len(events)
        if duplicates:
            counters["events_duplicate"] += duplicates
        if counters:
            await conn.executemany(_BUMP_COUNTER, [(k, v) for k, v in counters.items() if v])
        last = next((m for m in reversed(marks) if m.sm_id is not None), None)
        if last is not None:
            state["sm_id"] = last.sm_id
            state["sm_handled"] = str(last.handled)
        if state:
            now = utc_now()
            await conn.executemany(_SET_STATE, [(k, v, now) for k, v in state.items()])
        await conn.commit()
        self.alerts.committed()
        return appended + sum(map(len, upserts.values()))

    async def _new_api_rows(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The rows of ``rows`` not yet in api_calls, each once (a redelivery's slow path)."""
        seen: set[tuple[str, str]] = set()
        for start in range(0, len(rows), 400):
            chunk = rows[start : start + 400]
            values = ", ".join("(?, ?)" for _ in chunk)
            params = [v for r in chunk for v in (r[2], r[0])]
            found = await self._conn.execute_fetchall(
                f"SELECT ts, event_id FROM api_calls WHERE (ts, event_id) IN (VALUES {values})",
                params,
            )
            seen.update((r[0], r[1]) for r in found)
        fresh = []
        for row in rows:
            if (row[2], row[0]) not in seen:
                seen.add((row[2], row[0]))
                fresh.append(row)
        return fresh

    async def read_state(self) -> dict[str, str | None]:
        """The ``agent_state`` table as a dict (what was committed)."""
        self._check_usable()
        async with self._conn.execute("SELECT key, value FROM agent_state") as cursor:
            return {row[0]: row[1] async for row in cursor}

    async def last_received_at(self) -> str | None:
        """When the newest committed event arrived (for archive catch-up), or None."""
        self._check_usable()
        async with self._conn.execute(
            "SELECT max(m) FROM (SELECT max(received_at) AS m FROM events"
            " UNION ALL SELECT max(received_at) FROM api_calls)"
        ) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed")

    async def close(self, timeout: float = 10.0) -> None:
        """Commit what is pending, stop the writer and close the connection; idempotent."""
        if self._closed:
            return
        self._closing = True
        self._full.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.error(
                    "could not commit {} record(s) before closing; the server keeps the"
                    " unacknowledged ones for redelivery",
                    self.pending,
                )
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        for mark in self._marks:
            if not mark.future.done():
                mark.future.set_exception(StoreClosedError("the store closed before committing"))
        self._closed = True
        with contextlib.suppress(sqlite3.Error):
            await self._conn.close()
        log.info("database {} closed", self.settings.path)


def _state_row(event: Event, received_at: str) -> tuple[Any, ...]:
    p = event.payload
    if event.kind == "device":
        values: tuple[Any, ...] = (event.app, p["device_id"], event.text)
    elif event.kind == "tag":
        values = (event.app, p["device_id"], p["name"], dumps_value(p.get("value")))
    elif event.kind == "token":
        values = (event.app, p["device_id"], p["token"], int(p["valid"]))
    else:
        values = (event.app, p["device_id"], p["campaign_id"], p["action"])
    return (*values, event.ts, event.event_id, received_at)
