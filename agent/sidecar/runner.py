"""The sidecar process: one delivery loop per sink, and a watch loop for the rest.

The watch loop takes new notifications into each sink's work (:meth:`Outbox.sync`), runs the dead
man's switch (the agent's ``heartbeat`` row older than ``sidecar.agent_down_after`` raises
``agent_down``; a fresh one resolves it) and re-posts firing alerts to Alertmanager. A sink that
answers 401/403 raises ``sink_failing`` (its name in the ``api`` field), which the other sinks
deliver; its first success afterwards resolves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
from loguru import logger

from agent import __version__
from agent.alerts import Observation
from agent.config import Settings, WebhookSink, XmppSink
from agent.events import epoch
from agent.exceptions import StoreError
from agent.sidecar.http import Round
from agent.sidecar.instrumentation import InstrumentedClient
from agent.sidecar.sinks.alertmanager import AlertmanagerRelay
from agent.sidecar.sinks.webhook import WebhookRelay
from agent.sidecar.sinks.xmpp import XmppRelay
from agent.store.outbox import Outbox
from agent.systemd import Notifier, stop_on_signals, watchdog_interval

log = logger.bind(component="sidecar")

Relay = WebhookRelay | AlertmanagerRelay | XmppRelay


class Sidecar:
    def __init__(self, settings: Settings, outbox: Outbox) -> None:
        self.settings = settings
        self.outbox = outbox
        self.relays: dict[str, Relay] = {}
        self._clients: list[httpx.AsyncClient] = []
        self.failing: set[str] = set()
        self.agent_down = False
        self.started = time.time()
        self.notifier = Notifier()
        #: One per sink: a delivery round and an Alertmanager re-post never interleave.
        self._locks: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        for name, cfg in settings.sidecar.named_sinks():
            if isinstance(cfg, XmppSink):
                self.relays[name] = XmppRelay(name, cfg, settings)
                continue
            client = httpx.AsyncClient(timeout=cfg.timeout)
            self._clients.append(client)
            http = InstrumentedClient(client, client_statistics=getattr(cfg, "client_statistics", False))
            if isinstance(cfg, WebhookSink):
                self.relays[name] = WebhookRelay(name, cfg, http)
            else:
                self.relays[name] = AlertmanagerRelay(name, cfg, http)
        self._locks = {name: asyncio.Lock() for name in self.relays}

    async def close(self) -> None:
        for relay in self.relays.values():
            if isinstance(relay, XmppRelay):
                with contextlib.suppress(Exception):
                    await relay.close()
        for client in self._clients:
            await client.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        self.agent_down = await self.outbox.is_firing("agent_down")
        for name in self.relays:
            if await self.outbox.is_firing("sink_failing", name):
                self.failing.add(name)
        log.info("sidecar {} relaying to {}", __version__, ", ".join(self.relays) or "no sink")
        self.notifier.ready(f"relaying to {', '.join(self.relays) or 'no sink'}")
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch(stop))
            for name, relay in self.relays.items():
                tasks.create_task(self._deliver_loop(name, relay, stop))

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def _watch(self, stop: asyncio.Event) -> None:
        last_repost = last_ping = last_status = 0.0
        interval = watchdog_interval()
        while not stop.is_set():
            try:
                # A full disk refuses these writes: keep polling, sending and pinging meanwhile.
                await self.check_heartbeat()
                await self.outbox.sync(self.relays)
                for name in self.relays:
                    await self.outbox.flush_held(name)
            except StoreError as exc:
                log.error("{}; retrying every poll", exc)
            # This loop reading the database every poll_seconds is what proves the sidecar alive.
            mono = time.monotonic()
            if interval and mono - last_ping >= interval:
                self.notifier.watchdog()
                last_ping = mono
            if mono - last_status >= 10:
                failing = f"; FAILING: {', '.join(sorted(self.failing))}" if self.failing else ""
                agent = "; AGENT DOWN" if self.agent_down else ""
                self.notifier.status(f"relaying to {', '.join(self.relays) or 'no sink'}{failing}{agent}")
                last_status = mono
            now = time.time()
            ams = {n: r for n, r in self.relays.items() if isinstance(r, AlertmanagerRelay)}
            if ams and now - last_repost >= min(r.cfg.resend_seconds for r in ams.values()):
                for name, relay in ams.items():
                    # Under the relay's lock, so that a resolution delivered meanwhile cannot be
                    # overtaken by a stale firing copy read before it.
                    async with self._locks[name]:
                        await relay.repost(await self.outbox.firing())
                last_repost = now
            await self._sleep(stop, self.settings.sidecar.poll_seconds)

    async def check_heartbeat(self) -> None:
        """The dead man's switch."""
        beat = await self.outbox.heartbeat()
        seen = epoch(beat) if beat else self.started
        age = time.time() - seen
        limit = self.settings.sidecar.agent_down_after
        if age > limit and not self.agent_down:
            detail = f"last heartbeat {beat}" if beat else "the agent never wrote a heartbeat"
            log.error("agent down: {} ({:.0f} s ago)", detail, age)
            await self.outbox.observe([Observation("sidecar", "agent_down", detail=detail)])
            self.agent_down = True
        elif age <= limit and self.agent_down:
            log.info("agent back: heartbeat {}", beat)
            await self.outbox.observe([Observation("sidecar", "agent_down", ok=True)])
            self.agent_down = False

    async def _deliver_loop(self, name: str, relay: Relay, stop: asyncio.Event) -> None:
        cfg = relay.cfg
        while not stop.is_set():
            # One batch per round: each confirmation is committed before the next batch is sent.
            items = await self.outbox.due(name, limit=getattr(cfg, "max_batch", 100))
            if not items:
                await self._sleep(stop, self.settings.sidecar.poll_seconds)
                continue
            async with self._locks[name]:
                rnd: Round = await relay.deliver(items)
                await self.outbox.record(name, rnd.attempts, park_until=time.time() + cfg.park_seconds)
            with contextlib.suppress(StoreError):  # logged by the watch loop, which retries
                await self._meta(name, rnd)
            if rnd.pause:
                await self._sleep(stop, rnd.pause)

    async def _meta(self, name: str, rnd: Round) -> None:
        if rnd.failing and name not in self.failing:
            self.failing.add(name)
            log.error("sink {} is failing: {}", name, rnd.failing)
            await self.outbox.observe([Observation("sidecar", "sink_failing", api=name, detail=rnd.failing)])
        elif rnd.delivered and not rnd.failing and name in self.failing:
            self.failing.discard(name)
            log.info("sink {} works again", name)
            await self.outbox.observe([Observation("sidecar", "sink_failing", api=name, ok=True)])
        if rnd.failing or rnd.delivered:
            await self.outbox.sync(self.relays)


async def run_sidecar(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``)."""
    stop = stop_on_signals(stop)
    outbox = await Outbox.open(settings.store.path, settings.alerts, settings.store.busy_timeout_ms)
    sidecar = Sidecar(settings, outbox)
    try:
        await sidecar.run(stop)
    finally:
        sidecar.notifier.stopping("stopping: finishing the current delivery round")
        await sidecar.close()
        await outbox.close()
        sidecar.notifier.close()
    log.info("sidecar stopped")
