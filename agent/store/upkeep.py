"""What the writer does between commits: retention passes, the free-space watch, WAL checkpoints.

:class:`Upkeep` is the writer's hook (``agent.store.writer``): :meth:`Upkeep.admit` drops history
that arrives already older than the history retention (counted as ``events_expired``, logged at
most once a minute), :meth:`Upkeep.due_in` tells the writer when to wake for it, and
:meth:`Upkeep.step` runs one small piece of work after a commit: a prune step
(``agent.store.retention``), a checkpoint at a quiet moment, or the free-space check that raises
and resolves ``disk_low``.

One history cutoff serves both the arrivals and the passes, and it only moves forward: a row a
pass deleted is older than the cutoff any later arrival is judged by, so a redelivery of it is
dropped too, and pruning never reopens the door to a duplicate.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path

import aiosqlite
from loguru import logger

from agent.config import StoreSettings
from agent.config.retention import RetentionSettings
from agent.events import STATE_KINDS, Event, iso
from agent.store.checkpoints import BACKSTOP_PAGES, Checkpointer, checkpoint
from agent.store.retention import Cutoffs, Pass, auto_vacuum_mode

log = logger.bind(component="store")

MIB = 1024 * 1024
DAY = 86_400.0
DISK_EVERY = 1.0  # seconds between free-space checks
CHECKPOINT_EVERY = 1.0  # seconds between background checkpoint runs
PASS_CHECKPOINT_EVERY = 0.25  # ... while a pass writes many pages
PASS_DUTY = 0.25  # share of the writer's time a pass may take, unless it falls behind
FIRST_PASS_AFTER = 10.0  # seconds after start-up (or the interval, if shorter)
LOG_EVERY = 60.0  # at most one line a minute about expired arrivals


class Upkeep:
    """Retention, free space and checkpoints, run by the writer between commits."""

    def __init__(
        self, settings: StoreSettings, observe: Callable[..., None], count: Callable[[str, int], None]
    ) -> None:
        self.path = Path(settings.path)
        self.min_free = int(settings.min_free_mb * MIB)
        self._observe, self._count = observe, count
        self.retention: RetentionSettings | None = None
        self.sinks: frozenset[str] = frozenset()
        #: Wall clock the cutoffs are computed from (a benchmark replaying days of events moves it).
        self.clock: Callable[[], float] = time.time
        #: The history cutoff: arrivals and passes older than this are dropped; never moves back.
        self.cutoff: str | None = None
        self._cutoff_at = -math.inf
        self._pass: Pass | None = None
        self._next_pass = math.inf
        self._next_step = 0.0
        self._next_disk = 0.0
        self._next_checkpoint = time.monotonic() + CHECKPOINT_EVERY
        self._vacuum: bool | None = None
        self._started = False
        #: WAL checkpoints in a connection of their own (agent.store.checkpoints).
        self.checkpointer = Checkpointer(self.path)
        #: Whether free space was under ``min_free_mb`` at the last check (None before the first).
        self.disk_low: bool | None = None
        self.passes = 0
        self.last_pass: dict[str, int] = {}
        self._expired, self._expired_oldest, self._expired_logged = 0, "", -math.inf

    def retain(
        self,
        settings: RetentionSettings,
        sinks: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        first_pass_after: float | None = None,
    ) -> None:
        """Apply these retention settings; ``sinks`` are the configured sidecar sinks."""
        self.retention, self.sinks, self.clock = settings, frozenset(sinks), clock
        self.cutoff, self._cutoff_at = None, -math.inf
        wait = min(settings.interval, FIRST_PASS_AFTER) if first_pass_after is None else first_pass_after
        self._next_pass = time.monotonic() + wait

    # -- arrivals (synchronous: called by Store.submit_events) --------------------------------

    def history_cutoff(self) -> str | None:
        """The current history cutoff, refreshed at most once a second; None keeps history forever."""
        retention = self.retention
        if retention is None or not retention.history_days:
            return None
        now = time.monotonic()
        if now - self._cutoff_at >= 1.0:
            fresh = iso(self.clock() - retention.history_days * DAY)
            if self.cutoff is None or fresh > self.cutoff:
                self.cutoff = fresh
            self._cutoff_at = now
        return self.cutoff

    def admit(self, events: list[Event]) -> list[Event]:
        """The events worth storing: history and api events older than the cutoff are dropped and counted."""
        cutoff = self.history_cutoff()
        if cutoff is None or all(e.ts >= cutoff for e in events):
            return events
        kept = [e for e in events if e.ts >= cutoff or e.kind in STATE_KINDS]
        expired = len(events) - len(kept)
        if expired:
            self._count("events_expired", expired)
            self._count("events_received", expired)
            oldest = min(e.ts for e in events if e.ts < cutoff and e.kind not in STATE_KINDS)
            self._expired += expired
            self._expired_oldest = min(self._expired_oldest or oldest, oldest)
            self._log_expired(time.monotonic())
        return kept

    def _log_expired(self, now: float) -> None:
        if not self._expired or now - self._expired_logged < LOG_EVERY:
            return
        assert self.retention is not None
        log.warning(
            "{} event(s) arrived older than the history retention ({:g} days, cutoff {}) and were not"
            " stored (oldest ts {}); counted as events_expired, logged at most once a minute",
            self._expired,
            self.retention.history_days,
            self.cutoff,
            self._expired_oldest,
        )
        self._expired, self._expired_oldest, self._expired_logged = 0, "", now

    # -- between commits ------------------------------------------------------------------------

    @property
    def pruning(self) -> bool:
        """A pass is under way."""
        return self._pass is not None

    def due_in(self) -> float:
        """Seconds until :meth:`step` has something to do (0 while a pass is under way)."""
        soonest = min(self._next_pass, self._next_disk, self._next_checkpoint)
        if self._pass is not None:
            soonest = min(soonest, self._next_step)
        return max(0.0, soonest - time.monotonic())

    async def step(self, conn: aiosqlite.Connection, busy: bool) -> bool:
        """One small piece of work after a commit; ``busy``: records are waiting for the next one.

        Returns whether it ran a prune step (what arrived meanwhile has waited: commit it without
        holding the batch open). Never raises: a failed step is logged and the pass tried again later.
        """
        now = time.monotonic()
        if now >= self._next_disk:
            self._next_disk = now + DISK_EVERY
            self.check_disk()
        self._log_expired(now)
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + (CHECKPOINT_EVERY if self._pass is None else PASS_CHECKPOINT_EVERY)
            self.checkpointer.start(quiet=not busy)
        try:
            if not self._started:
                # The checkpointer copies the WAL; the writer does it itself only if that falls behind.
                await conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
                self._started = True
            if self.checkpointer.reset_wanted():
                await checkpoint(conn)  # only what came since the background run: the WAL starts over
            if self._pass is None and now >= self._next_pass:
                await self._begin(conn)
            # Not while a checkpoint copies pages: both would compete for the disk.
            if self._pass is not None and now >= self._next_step and not self.checkpointer.running:
                await self._pass.step(conn)
                took = time.monotonic() - now
                # A pass still running when the next is due is falling behind the stream: no pause.
                behind = self.retention is not None and now - self._pass.started > self.retention.interval
                self._next_step = time.monotonic() + (0.0 if behind else took * (1 / PASS_DUTY - 1))
                if self._pass.finished:
                    self._end()
                return True
        except Exception as exc:
            with suppress(sqlite3.Error):
                await conn.rollback()
            self._pass = None
            self._next_pass = now + min(60.0, self.retention.interval if self.retention else 60.0)
            if isinstance(exc, sqlite3.Error | OSError):
                log.warning("retention step failed ({}); the pass starts again later", exc)
            else:
                log.opt(exception=exc).error("unexpected error in a retention step; the pass starts again later")
        return False

    def _days_ago(self, days: float) -> str | None:
        return iso(self.clock() - days * DAY) if days else None

    async def _begin(self, conn: aiosqlite.Connection) -> None:
        if self.retention is None:
            self._next_pass = math.inf
            return
        if self._vacuum is None:
            self._vacuum = await auto_vacuum_mode(conn) == 2
        cutoffs = Cutoffs(
            self.history_cutoff(),
            self._days_ago(self.retention.quarantine_days),
            self._days_ago(self.retention.deliveries_days),
            self.sinks,
        )
        self._pass = Pass.plan(cutoffs, self._vacuum)

    def _end(self) -> None:
        assert self._pass is not None and self.retention is not None
        done, elapsed = self._pass.done, time.monotonic() - self._pass.started
        self._pass = None
        self.passes += 1
        self.last_pass = done
        self._next_pass = time.monotonic() + self.retention.interval
        self.checkpointer.start()
        if any(done.values()):
            log.info(
                "retention pass: deleted {} history row(s), {} state change(s), {} quarantined, {} notification(s);"
                " returned {} free page(s) to the file system in {:.1f} s",
                done.get("history", 0),
                done.get("state_changes", 0),
                done.get("quarantine", 0),
                done.get("notifications", 0),
                done.get("pages", 0),
                elapsed,
            )

    def check_disk(self) -> None:
        """Raise ``disk_low`` when the database's file system has less than ``min_free_mb`` free; resolve it after."""
        if not self.min_free:
            return
        try:
            fs = os.statvfs(self.path.resolve().parent)
        except OSError:
            return
        free = fs.f_bavail * fs.f_frsize
        low, before = free < self.min_free, self.disk_low
        if low == before:
            return
        self.disk_low = low
        if low:
            detail = (
                f"{free / MIB:.1f} MB free on the file system of {self.path},"
                f" under XMPPMON_STORE__MIN_FREE_MB={self.min_free / MIB:g}"
            )
            log.warning("disk low: {}", detail)
            self._observe("store", "disk_low", api="disk", detail=detail)
        else:
            if before is not None:
                log.info("disk space back: {:.1f} MB free on the file system of {}", free / MIB, self.path)
            self._observe("store", "disk_low", api="disk", ok=True)

    async def close(self) -> None:
        await self.checkpointer.close()
