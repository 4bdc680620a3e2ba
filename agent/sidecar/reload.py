"""The sidecar's sinks, one at a time: a relay built and closed, a delivery task started and
stopped, and a reload (SIGHUP) that adds, removes and replaces sinks in place.

Delivery state lives in the database per sink name (``delivery_state``, ``sink_cursor``), so a
sink stopped by a reload loses nothing: a replaced sink (same name, new settings) goes on from its
pending notifications; a new name starts from the open alerts (:meth:`Outbox.sync`); a removed
sink's pending notifications stay in the database, and wait for it if it comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import httpx
from loguru import logger

from agent.alerts import Observation
from agent.config import Settings, WebhookSink, XmppSink
from agent.config.relay import AlertmanagerSink
from agent.reload import Reloader
from agent.sidecar.instrumentation import InstrumentedClient
from agent.sidecar.sinks.alertmanager import AlertmanagerRelay
from agent.sidecar.sinks.webhook import WebhookRelay
from agent.sidecar.sinks.xmpp import XmppRelay, check_account

if TYPE_CHECKING:
    from agent.sidecar.runner import Sidecar

log = logger.bind(component="sidecar")

Relay = WebhookRelay | AlertmanagerRelay | XmppRelay
SinkSettings = WebhookSink | AlertmanagerSink | XmppSink
Loop = Callable[[str, Relay, asyncio.Event], Coroutine[Any, Any, None]]

#: The sidecar changes these in place; it does not use these; what else changes needs a restart
#: (the database, and the server an xmpp sink connects to).
IN_PLACE = ("log", "alerts", "sidecar")
IGNORED = (
    "monitor", "keepalive", "reconnect", "plugins", "export", "azure", "retention", "metrics", "health",
    "xmpp.jid",  # only checked against the xmpp sinks' accounts, with the new value (check_sinks)
    "xmpp.password", "xmpp.resource",
    "store.batch_size", "store.flush_ms", "store.heartbeat_seconds", "store.stall_seconds",
    "store.max_backlog_records", "store.max_backlog_mb", "store.max_commit_records", "store.identity_window",
)  # fmt: skip
#: Inside ``sidecar``, but bound once at start: the metrics listener.
RESTART = ("sidecar.metrics_listen",)
#: How long a reload waits for a stopped sink's round in progress before cancelling it.
STOP_GRACE = 30.0


def build_relay(name: str, cfg: SinkSettings, settings: Settings) -> tuple[Relay, httpx.AsyncClient | None]:
    """The relay of one sink, and the HTTP client it owns (None for an xmpp sink)."""
    if isinstance(cfg, XmppSink):
        return XmppRelay(name, cfg, settings), None
    client = httpx.AsyncClient(timeout=cfg.timeout)
    http = InstrumentedClient(client, client_statistics=getattr(cfg, "client_statistics", False))
    if isinstance(cfg, WebhookSink):
        return WebhookRelay(name, cfg, http), client
    return AlertmanagerRelay(name, cfg, http), client


async def close_relay(name: str, relay: Relay, client: httpx.AsyncClient | None) -> None:
    if isinstance(relay, XmppRelay):
        try:
            await relay.close()
        except Exception as exc:  # stopping goes on: the server drops the session itself
            log.warning("sink {}: closing the XMPP connection failed: {}: {}", name, type(exc).__name__, exc)
    if client is not None:
        await client.aclose()


class SinkLoops:
    """One delivery task per sink in the sidecar's task group, each with its own stop event."""

    def __init__(self, group: asyncio.TaskGroup, loop: Loop, stop: asyncio.Event) -> None:
        self._group, self._loop, self._stop = group, loop, stop
        self._halts: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        group.create_task(self._stop_all(), name="xmppmon-sidecar-sinks-stop")

    async def _stop_all(self) -> None:
        await self._stop.wait()
        for halt in self._halts.values():
            halt.set()

    def start(self, name: str, relay: Relay) -> None:
        halt = asyncio.Event()
        if self._stop.is_set():  # the sidecar is stopping: the task ends at once
            halt.set()
        self._halts[name] = halt
        self._tasks[name] = self._group.create_task(self._loop(name, relay, halt), name=f"xmppmon-sink-{name}")

    async def stop(self, name: str, grace: float = STOP_GRACE) -> None:
        """Let the sink's round in progress finish and be recorded (at most ``grace`` seconds), then end it."""
        self._halts.pop(name).set()
        task = self._tasks.pop(name)
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            log.warning("sink {}: its delivery round did not end within {:.0f} s; cancelled, what it was"
                        " sending stays pending", name, grace)  # fmt: skip
            task.cancel()
            await asyncio.wait({task})


def check_sinks(new: Settings) -> None:
    """An xmpp sink may not log in as the agent (ConfigError, as at start-up)."""
    for name, cfg in new.sidecar.named_sinks():
        if isinstance(cfg, XmppSink):
            check_account(name, cfg, new)


async def apply_sinks(sidecar: Sidecar, old: Settings, new: Settings) -> None:
    """Stop the removed and changed sinks (after their round in progress), then start the changed and new ones."""
    before, after = dict(old.sidecar.named_sinks()), dict(new.sidecar.named_sinks())
    removed = [name for name in before if name not in after]
    replaced = [name for name in after if name in before and after[name] != before[name]]
    added = [name for name in after if name not in before]
    for name in removed + replaced:
        await sidecar.remove_sink(name)
    sidecar.settings = new
    for name in replaced + added:
        sidecar.add_sink(name, after[name])
    for name in removed:  # its own alerts are about a sink that is gone
        if name in sidecar.failing:
            sidecar.failing.discard(name)
            await sidecar.outbox.observe([Observation("sidecar", "sink_failing", api=name, ok=True)])
        sidecar.dead_letters.discard(name)
    if removed or replaced or added:
        for listener in sidecar.on_sinks:
            listener(list(sidecar.relays))
        listed = [", ".join(names) or "none" for names in (added, replaced, removed, list(sidecar.relays))]
        log.info("sinks reloaded: added {}, replaced {}, removed {}; relaying to {}", *listed)
        await sidecar.outbox.sync(sidecar.orders)  # a new sink takes the open alerts now


def sidecar_reloader(settings: Settings, load: Callable[[], Settings]) -> Reloader:
    """The sidecar's reloader, listening for SIGHUP; :func:`sidecar_applies` adds the running sidecar."""
    reloader = Reloader(settings, load, in_place=IN_PLACE, ignored=IGNORED, restart=RESTART)
    reloader.checks.append(check_sinks)
    reloader.listen()
    return reloader


def sidecar_applies(reloader: Reloader, sidecar: Sidecar) -> None:
    reloader.notifier = sidecar.notifier

    async def apply(old: Settings, new: Settings, applied: frozenset[str]) -> None:
        if any(name == "alerts" or name.startswith("alerts.") for name in applied):
            sidecar.outbox.alerts.reconfigure(new.alerts)
        await apply_sinks(sidecar, old, new)

    reloader.appliers.append(apply)
