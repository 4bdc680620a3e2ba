"""The agent's lifecycle: open the store, run the session, close them in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from loguru import logger

from agent import __version__
from agent.config import Settings
from agent.events import utc_now
from agent.health import Health
from agent.metrics.agent import agent_metrics
from agent.reload import agent_applies, agent_reloader
from agent.session import MonitorSession
from agent.store import Store
from agent.store.live import newest_arrival
from agent.systemd import Notifier, stop_on_signals, supervise

log = logger.bind(component="agent")


@dataclass
class App:
    settings: Settings
    store: Store
    session: MonitorSession


@contextlib.asynccontextmanager
async def lifespan(settings: Settings) -> AsyncIterator[App]:
    """``async with lifespan(settings) as app``: the store, then the session; closed in reverse."""
    store = await Store.open(settings.store, settings.alerts)
    store.upkeep.retain(settings.retention, sinks=[name for name, _ in settings.sidecar.named_sinks()])
    try:
        store.set_state("started_at", utc_now())
        store.set_state("pid", os.getpid())
        store.set_state("version", __version__)
        session = MonitorSession(settings, store)
        yield App(settings, store, session)
    finally:
        await store.close()


async def run_agent(
    settings: Settings, stop: asyncio.Event | None = None, load: Callable[[], Settings] | None = None
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then shut down cleanly; with ``load``, SIGHUP reloads."""
    stop = stop_on_signals(stop)
    reloader = agent_reloader(settings, load) if load is not None else None
    log.info(
        "xmppmon {} starting: {} -> {} ({} app(s)), database {}",
        __version__,
        settings.xmpp.jid,
        settings.monitor.jid,
        len(settings.monitor.apps),
        settings.store.path,
    )
    notifier = Notifier()
    try:
        async with lifespan(settings) as app:
            # One health object for the systemd watchdog and /readyz.
            health = Health(app.store, app.session, settings.health.max_silence)
            health.seed(await asyncio.to_thread(newest_arrival, settings.store.path))
            with agent_metrics(settings, app.store, app.session, health):
                # sd_notify: READY, STATUS, WATCHDOG while the writer is healthy, STOPPING on stop.
                supervisor = asyncio.ensure_future(
                    supervise(notifier, app.store, app.session, stop, settings.xmpp.negotiation_timeout + 5, health)
                )
                reloads = None
                if reloader is not None:  # SIGHUP: log level, alert rules, retention in place (agent.reload)
                    agent_applies(reloader, app.store, notifier)
                    reloads = asyncio.ensure_future(reloader.serve(stop))
                try:
                    await app.session.run(stop)
                finally:
                    stop.set()
                    await supervisor
                    if reloads is not None:
                        await reloads
    finally:
        notifier.close()
        if reloader is not None:
            reloader.close()
    log.info("xmppmon stopped")
