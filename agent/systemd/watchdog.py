"""The agent's health policy for systemd: READY, STATUS= lines, and WATCHDOG=1 only while healthy.

:func:`supervise` sends READY once the store is open and the first session is up (or the server is
unreachable and the agent is retrying, so a down server does not make systemd restart it in a
loop), ``STATUS=`` lines for ``systemctl status``, and ``WATCHDOG=1`` only while the event loop
(this task runs at all) and the writer (commits succeed and make progress) are healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from loguru import logger

from agent.health import Health, WriterHealth
from agent.store.readers import firing_count
from agent.systemd.notify import Notifier, watchdog_interval

if TYPE_CHECKING:
    from agent.session import MonitorSession
    from agent.store import Store

log = logger.bind(component="systemd")

__all__ = ["STATUS_EVERY", "WriterHealth", "supervise"]

#: How often STATUS= is refreshed (the events-per-minute figure is over the last minute).
STATUS_EVERY = 10.0


async def _session_state(store: Store) -> str:
    """The stored session state, or "" when it cannot be read (logged with the reason; the log's
    repeat filter shows an identical line once per window)."""
    try:
        state = await asyncio.wait_for(store.read_state(), 2.0)
    except TimeoutError:
        log.warning("cannot read the session state for READY: the database did not answer within 2 s")
        return ""
    except Exception as exc:  # READY must not depend on it: without a state, the timeout decides
        log.warning("cannot read the session state for READY: {}: {}", type(exc).__name__, exc)
        return ""
    return state.get("session") or ""


async def supervise(
    notifier: Notifier,
    store: Store,
    session: MonitorSession,
    stop: asyncio.Event,
    ready_timeout: float = 30.0,
    health: Health | None = None,
) -> None:
    """Tell systemd about the agent until ``stop`` is set; then send STOPPING=1.

    ``health`` is the object ``/readyz`` reads too (:mod:`agent.health`); one is made if not given.
    """
    interval = watchdog_interval()
    tick = min(interval / 2, 1.0) if interval else 1.0
    health = health or Health(store, session)
    started = time.monotonic()
    ready = False
    last_ping = last_status = 0.0
    counted = [(started, store.committed_events)]
    wedged = False
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            now = time.monotonic()
            if not ready:
                state = "connected" if session.connected.is_set() else await _session_state(store)
                if state.startswith("connected"):
                    notifier.ready("connected")
                    ready = True
                    log.info("ready: session up")
                elif state.startswith(("retrying", "disconnected")) or now - started > ready_timeout:
                    notifier.ready(f"server unreachable, {state or 'connecting'}")
                    ready = True
                    log.info("ready: the server is unreachable; retrying in the background")
            healthy = health.alive(now)
            if healthy and interval and now - last_ping >= interval:
                notifier.watchdog()
                last_ping = now
            if healthy == wedged:  # log each change once
                wedged = not healthy
                if wedged:
                    log.error("writer wedged ({}): no longer feeding the systemd watchdog", health.writer.reason)
                else:
                    log.info("writer healthy again: feeding the systemd watchdog")
            failing = health.writer.failing
            if ready and (now - last_status >= STATUS_EVERY or wedged or (failing and now - last_status >= 1.0)):
                counted = [c for c in counted if now - c[0] <= 60.0] + [(now, store.committed_events)]
                per_minute = (counted[-1][1] - counted[0][1]) * 60.0 / max(now - counted[0][0], 1.0)
                firing = await asyncio.to_thread(firing_count, store.settings.path)
                link = "connected" if session.connected.is_set() else "disconnected, retrying"
                text = f"{link}; {per_minute:.0f} events/min"
                if firing is not None:
                    text += f"; {firing} alert(s) firing"
                if wedged:
                    text += f"; WRITER WEDGED: {health.writer.reason}"
                elif health.writer.failing:
                    text += f"; DATABASE FAILING, retrying (events wait on the server): {health.writer.failing}"
                notifier.status(text)
                last_status = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stopping), tick)
    finally:
        stopping.cancel()
        notifier.stopping()
