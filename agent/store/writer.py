"""The one writer task: group commit, barriers, backpressure and the heartbeat.

Plugins hand validated events to :meth:`Store.submit_events`; the writer task collects them and
commits them in batches (at ``batch_size`` records or after ``flush_ms``), in WAL mode with
``synchronous=NORMAL``. :meth:`Store.barrier` resolves once everything submitted before it is
committed, and records the XEP-0198 position it covers in the same transaction, which is how the
session acknowledges to the server only what is on disk. Alert rules are evaluated in that same
transaction (``agent.store.alerts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable

import aiosqlite
from loguru import logger

from agent.alerts import AlertRules, Observation
from agent.config import AlertSettings, StoreSettings
from agent.events import Event, utc_now
from agent.exceptions import StoreClosedError
from agent.store import readers
from agent.store.backlog import Backlog, Mark
from agent.store.batch import Commit, write_batch
from agent.store.connection import open_writer
from agent.store.identity import Identity
from agent.store.rows import Quarantined
from agent.store.schema import SCHEMA_VERSION
from agent.store.upkeep import Upkeep

log = logger.bind(component="store")
_SOURCES = frozenset({"api", "subscription", "session", "store", "schema"})  # the alert sources the agent raises


class Store:
    """The agent's database: one connection, one writer task, group commit."""

    def __init__(
        self, settings: StoreSettings, conn: aiosqlite.Connection, alerts: AlertSettings | None = None
    ) -> None:
        self.settings = settings
        #: Alert rules, evaluated in the transaction of the events that caused them (agent.alerts).
        self.alerts = AlertRules(alerts or AlertSettings(), _SOURCES)
        self._conn = conn
        self._backlog = Backlog()
        #: The ids stored, for an id sent again with another ts (agent.store.identity).
        self.identity = Identity(settings.identity_window)
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
        #: Called after each successful commit with what it wrote (see :class:`Commit`).
        self.on_commit: list[Callable[[Commit], None]] = []
        #: Record each stanza's arrival time for the listeners (arrival-to-commit latency).
        self.track_arrivals = False
        #: Called with True when the backlog passes ``high_water`` and False once it drains.
        self.backpressure: Callable[[bool], None] | None = None
        self.high_water = settings.max_backlog_records
        self.high_water_bytes = settings.max_backlog_mb * 1024 * 1024
        self._over = False
        #: Retention, free space and checkpoints between commits (agent.store.upkeep).
        self.upkeep = Upkeep(settings, self.observe, self.count)

    @classmethod
    async def open(cls, settings: StoreSettings, alerts: AlertSettings | None = None) -> Store:
        """Open (creating if needed) and migrate the database, and start the writer task."""
        path = settings.path
        conn = await open_writer(path, settings.busy_timeout_ms)
        store = cls(settings, conn, alerts)
        try:
            await store.identity.attach(conn)
        except BaseException:
            await conn.close()
            raise
        store._task = asyncio.create_task(store._run(), name="xmppmon-store-writer")
        log.info("database {} open (schema version {})", path, SCHEMA_VERSION)
        return store

    # -- what plugins and the session call (synchronous, never awaits) ------------------------

    @property
    def pending(self) -> int:
        """Records waiting for the next commit."""
        return self._backlog.records

    def submit_events(self, events: list[Event], received_at: str) -> None:
        self._check_open()
        events = self.upkeep.admit(events)
        self._backlog.add_events(events, received_at, time.perf_counter() if self.track_arrivals else None)
        self._poke()

    def submit_quarantine(self, item: Quarantined) -> None:
        self._check_open()
        self._backlog.add_quarantine(item)
        self._poke()

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a persistent counter; written with the next commit."""
        self._backlog.count(name, amount)
        self._wake.set()

    def set_state(self, key: str, value: object) -> None:
        """Record an ``agent_state`` value; written with the next commit."""
        self._backlog.set_state(key, None if value is None else str(value))
        self._wake.set()

    def observe(self, source: str, code: str, *, app: str = "", api: str = "", ok: bool = False,
                detail: str | None = None) -> None:  # fmt: skip
        """Record an observation for the alert rules (``ok=True``: (source, app, api) is healthy again)."""
        self.alerts.observe(Observation(source, code, app, api, ok, detail))
        self._wake.set()

    def forget_stream(self) -> None:
        """The server discarded the XEP-0198 stream: never store its position again.

        Barriers still waiting carry the dead stream's id; without this, their commit would write
        it back after the state was cleared, and the next start would try to resume a dead stream.
        """
        self._backlog.forget_stream()
        self.set_state("sm_id", None)

    def barrier(self, sm_id: str | None = None, handled: int | None = None) -> asyncio.Future[None]:
        """A future resolved once everything submitted so far is committed.

        ``sm_id``/``handled`` (the XEP-0198 stream id and inbound count) are stored in the same
        transaction, so a new process resumes from a position whose events are all on disk.
        """
        self._check_open()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._backlog.add_mark(Mark(future, sm_id, handled))
        self._full.set()  # an acknowledgement is waiting: do not hold the batch open
        self._wake.set()
        return future

    @property
    def over(self) -> bool:
        """True from the moment the backlog passes a high-water mark until it drains below a tenth."""
        return self._over

    @property
    def backlog_bytes(self) -> int:
        """Bytes of the records waiting (payloads and raw text, plus a per-record overhead)."""
        return self._backlog.bytes

    def _poke(self) -> None:
        backlog = self._backlog
        if backlog.records >= self.settings.batch_size:
            self._full.set()
        if not self._over and (backlog.records >= self.high_water or backlog.bytes >= self.high_water_bytes):
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
            timeout = min(timeout, self.upkeep.due_in())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if not self._closing and not self._full.is_set():
                # Group commit: let a batch fill for flush_ms unless it is already full.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.settings.flush_ms / 1000)
            self._full.clear()
            if time.monotonic() - self._last_heartbeat >= self.settings.heartbeat_seconds:
                self._backlog.state["heartbeat"] = utc_now()
                self._backlog.state["writer_backlog"] = str(self.pending)  # for xmppmon top
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
            if not self._closing and await self.upkeep.step(self._conn, self.pending > 0) and self.pending:
                self._full.set()  # what arrived during a prune step has waited: commit it now

    def _has_work(self) -> bool:
        return self._backlog.has_work() or self.alerts.has_pending

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
        if not self._has_work():
            return
        taken = self._backlog.take(self.settings.max_commit_records)
        try:
            written = await write_batch(self._conn, self.alerts, self.identity, taken.batch)
        except BaseException:
            self._backlog.put_back(taken)
            self.alerts.rollback()
            with contextlib.suppress(sqlite3.Error):
                await self._conn.rollback()
            raise
        self.committed_events += written.appended + written.upserted
        backlog = self._backlog
        if self._over and backlog.records < self.high_water // 10 and backlog.bytes < self.high_water_bytes // 10:
            self._signal_backpressure(False)
        if backlog.records:
            self._full.set()  # more than one commit's worth was waiting: go on at once
            self._wake.set()
        self.last_commit = time.monotonic()
        if not self.healthy:
            log.info("database writes recovered; committed {} pending record(s)", len(taken.batch.events))
            self.healthy, self.last_error = True, None
            self.observe("store", "store_failing", ok=True)
        for mark in taken.marks:
            if not mark.future.done():
                mark.future.set_result(None)
        written.arrivals = [t for _, t in taken.arrivals]
        for listener in self.on_commit:
            listener(written)

    async def read_state(self) -> dict[str, str | None]:
        """The ``agent_state`` table as a dict (what was committed)."""
        self._check_usable()
        return await readers.read_state(self._conn)

    async def last_received_at(self) -> str | None:
        """When the newest committed event arrived (for archive catch-up), or None."""
        self._check_usable()
        return await readers.last_received_at(self._conn)

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
                log.error("could not commit {} record(s) before closing; the server keeps the"
                          " unacknowledged ones for redelivery", self.pending)  # fmt: skip
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        for mark in self._backlog.marks:
            if not mark.future.done():
                mark.future.set_exception(StoreClosedError("the store closed before committing"))
        self._closed = True
        await self.upkeep.close()
        with contextlib.suppress(sqlite3.Error):
            await self._conn.close()
        log.info("database {} closed", self.settings.path)
