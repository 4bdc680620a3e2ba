"""The agent's health, one object read by the systemd watchdog and by ``/readyz``.

Alive (the watchdog keeps systemd from restarting the agent) is narrower than ready (``/readyz``
says data flows):

* alive: the writer is not wedged (:func:`wedged_reason`); the event loop runs the check at all;
* ready: the session is up, the writer commits (not wedged, its last commit succeeded, and it
  committed recently: the heartbeat commits even when nothing arrives), and, when
  ``health.max_silence`` is set, an event arrived within that many seconds.

:meth:`Health.reasons` may be called from the metrics listener's thread: it only reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.events import epoch

if TYPE_CHECKING:
    from agent.session import MonitorSession
    from agent.store import Commit, Store


def wedged_reason(store: Store, stall_after: float, now: float) -> str:
    """Why the writer is stuck, or "" when it is not.

    Wedged means stuck, not failing: one write has been in progress for ``stall_after`` seconds
    (blocked inside SQLite or its thread), or records have waited that long with no write even
    attempted (the writer task is gone). A writer whose commits fail and that keeps retrying (disk
    full, a lock held past busy_timeout) is not wedged: a restart cannot free the disk, it would
    only crash-loop; the failure is reported by STATUS, the log and the ``store_failing`` alert.
    """
    started = store.write_started
    if started is not None and now - started > stall_after:
        return f"a database write has been blocked for {now - started:.0f} s"
    if started is None and store.pending and now - store.last_attempt > stall_after:
        return f"no database write attempted for {now - store.last_attempt:.0f} s with {store.pending} records waiting"
    return ""


@dataclass
class WriterHealth:
    """Whether the store's writer is alive, for the watchdog (see :func:`wedged_reason`)."""

    stall_after: float
    reason: str = field(default="")
    failing: str = field(default="")

    def check(self, store: Store, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.failing = "" if store.healthy else (store.last_error or "database writes are failing")
        self.reason = wedged_reason(store, self.stall_after, now)
        return not self.reason


class Health:
    """What the watchdog and ``/readyz`` read; it listens to the store's commits and the session."""

    def __init__(self, store: Store, session: MonitorSession, max_silence: float = 0.0) -> None:
        self.store = store
        self.session = session
        self.max_silence = max_silence
        self.writer = WriterHealth(stall_after=store.settings.stall_seconds)
        #: The writer commits a heartbeat at least this often while it works.
        self.commit_within = max(4 * store.settings.heartbeat_seconds, store.settings.stall_seconds)
        self.started = time.time()
        #: Wall time of the newest event that arrived (committed, duplicates included); None: none yet.
        self.last_event: float | None = None
        self.down_reason = "no session yet"
        store.on_commit.append(self._committed)
        session.hooks.down.append(self._down)
        session.hooks.failed.append(self._down)

    def seed(self, last_received_at: str | None) -> None:
        """Start from the newest event in the database, so a restart does not hide a silence."""
        if last_received_at and self.last_event is None:
            self.last_event = epoch(last_received_at)

    def _committed(self, commit: Commit) -> None:
        if commit.counters.get("events_received"):
            self.last_event = time.time()

    def _down(self, reason: str) -> None:
        self.down_reason = reason

    def last_event_age(self) -> float:
        """Seconds since the newest event arrived (since start when none ever did)."""
        return max(0.0, time.time() - (self.last_event or self.started))

    def alive(self, now: float | None = None) -> bool:
        """The watchdog's question: is the writer not wedged? (``writer.reason`` says why not)."""
        return self.writer.check(self.store, now)

    def reasons(self) -> list[str]:
        """Why the agent is not ready; empty when it is."""
        store, now = self.store, time.monotonic()
        reasons = []
        if not self.session.connected.is_set():
            reasons.append(f"session down: {self.down_reason}")
        wedged = wedged_reason(store, self.writer.stall_after, now)
        if wedged:
            reasons.append(f"writer wedged: {wedged}")
        elif not store.healthy:
            reasons.append(f"writer failing: {store.last_error or 'database writes are failing'}")
        elif now - store.last_commit > self.commit_within:
            reasons.append(f"writer idle: no commit for {now - store.last_commit:.0f} s")
        if self.max_silence:
            age = self.last_event_age()
            if age > self.max_silence:
                reasons.append(f"no event for {age:.0f} s (XMPPMON_HEALTH__MAX_SILENCE={self.max_silence:g})")
        return reasons
