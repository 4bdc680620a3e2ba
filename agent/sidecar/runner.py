"""The sidecar process: one delivery loop per sink, and a watch loop for the rest.

The watch loop takes new notifications into each sink's work (:meth:`Outbox.sync`), runs the dead
man's switch (the agent's ``heartbeat`` row older than ``sidecar.agent_down_after`` raises
``agent_down``; a fresh one resolves it) and re-posts firing alerts to Alertmanager. A sink that
answers 401/403 raises ``sink_failing`` (its name in the ``api`` field), which the other sinks
deliver; its first success afterwards resolves it. A notification a sink dead-letters raises
``dead_letter`` (warning, the sink in ``api``), which resolves after its class's ``quiet_seconds``
without a new one; the sidecar's alerts are swept (quiet, repeats) while any of them fires. SIGHUP
reloads the settings: sinks are added, removed and replaced in place (``agent.sidecar.reload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx
from loguru import logger

from agent import __version__
from agent.alerts import Observation
from agent.config import Settings, XmppSink
from agent.events import epoch
from agent.exceptions import StoreError
from agent.metrics.sidecar import sidecar_metrics
from agent.reload import Reloader
from agent.sidecar.forward import Forwarder
from agent.sidecar.http import Round
from agent.sidecar.reload import (
    Relay,
    SinkLoops,
    SinkSettings,
    build_relay,
    close_relay,
    sidecar_applies,
    sidecar_reloader,
)
from agent.sidecar.sinks.alertmanager import AlertmanagerRelay
from agent.sidecar.sinks.xmpp import check_account
from agent.store.outbox import Attempt, Outbox
from agent.store.sequencing import Policy
from agent.systemd import Notifier, stop_on_signals, watchdog_interval

log = logger.bind(component="sidecar")


class Sidecar:
    def __init__(self, settings: Settings, outbox: Outbox) -> None:
        self.settings = settings
        self.outbox = outbox
        self.relays: dict[str, Relay] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}
        self.failing: set[str] = set()
        #: Sinks whose dead_letter alert fires.
        self.dead_letters: set[str] = set()
        self.agent_down = False
        self.started = time.time()
        self.notifier = Notifier()
        #: One per sink: a delivery round and an Alertmanager re-post never interleave.
        self._locks: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        #: Called after each recorded delivery round with the sink's name and the round (metrics).
        self.on_round: list[Callable[[str, Round], None]] = []
        #: Called with the sinks' names after a reload changed them (metrics).
        self.on_sinks: list[Callable[[list[str]], None]] = []
        #: Each sink's delivery policy (agent.store.sequencing): what a later notification replaces.
        self.orders: dict[str, Policy] = {}
        #: Each sink's delivery task, from run() on.
        self.loops: SinkLoops | None = None
        #: Reloads on SIGHUP once run() has started the sinks (agent.sidecar.reload).
        self.reloader: Reloader | None = None
        for name, cfg in settings.sidecar.named_sinks():
            self.add_sink(name, cfg)

    def add_sink(self, name: str, cfg: SinkSettings) -> None:
        """Build the sink's relay; once run() has started, start its delivery loop too."""
        relay, client = build_relay(name, cfg, self.settings)
        self.relays[name] = relay
        if client is not None:
            self._clients[name] = client
        self._locks[name] = asyncio.Lock()
        self.orders[name] = relay.order
        if self.loops is not None:
            self.loops.start(name, relay)

    async def remove_sink(self, name: str) -> None:
        """Stop the sink after its round in progress and close its relay; its delivery state stays stored."""
        relay = self.relays.pop(name)
        self.orders.pop(name, None)
        if self.loops is not None:
            await self.loops.stop(name)
        async with self._locks[name]:  # an Alertmanager re-post in progress ends first
            await close_relay(name, relay, self._clients.pop(name, None))

    async def close(self) -> None:
        for name, relay in list(self.relays.items()):
            await close_relay(name, relay, self._clients.pop(name, None))

    async def run(self, stop: asyncio.Event) -> None:
        self.agent_down = await self.outbox.is_firing("agent_down")
        for name in self.relays:
            if await self.outbox.is_firing("sink_failing", name):
                self.failing.add(name)
            if await self.outbox.is_firing("dead_letter", name):
                self.dead_letters.add(name)
        log.info("sidecar {} relaying to {}", __version__, ", ".join(self.relays) or "no sink")
        self.notifier.ready(f"relaying to {', '.join(self.relays) or 'no sink'}")
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch(stop))
            if self.settings.forward.enabled:
                tasks.create_task(Forwarder(self.settings, self.outbox).run(stop))
            self.loops = SinkLoops(tasks, self._deliver_loop, stop)
            for name, relay in self.relays.items():
                self.loops.start(name, relay)
            if self.reloader is not None:
                tasks.create_task(self.reloader.serve(stop))

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
                await self._sweep()
                await self.outbox.sync(self.orders)
                for name in list(self.relays):
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
                        if self.relays.get(name) is relay:  # not removed by a reload meanwhile
                            await relay.repost(await self.outbox.firing())
                last_repost = now
            await self._sleep(stop, self.settings.sidecar.poll_seconds)

    async def _sweep(self) -> None:
        """While one of the sidecar's alerts fires, let its rules run: quiet resolution, repeats."""
        if not (self.dead_letters or self.failing or self.agent_down) or not self.outbox.alerts.sweep_due():
            return
        await self.outbox.observe([])
        self.dead_letters = {name for name in self.dead_letters if await self.outbox.is_firing("dead_letter", name)}

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
            for listener in self.on_round:
                listener(name, rnd)
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
        # Its own dead_letter notifications rejected by the same sink do not count: no feedback loop.
        dead = [a for a in rnd.dead if not _about_sink(a.item.alert, name)]
        if dead:
            await self.outbox.observe([Observation("sidecar", "dead_letter", api=name, detail=_dead(a))
                                       for a in dead])  # fmt: skip
            self.dead_letters.add(name)
        if rnd.failing or rnd.delivered or dead:
            await self.outbox.sync(self.orders)


def _about_sink(alert: dict[str, Any], sink: str) -> bool:
    return alert.get("source") == "sidecar" and alert.get("code") == "dead_letter" and alert.get("api") == sink


def _dead(attempt: Attempt) -> str:
    a, item = attempt.item.alert, attempt.item
    what = " ".join(str(p) for p in (a.get("source"), a.get("code"), a.get("app"), a.get("api")) if p)
    return f"notification {item.key} ({item.transition} {what}): {attempt.error}"


async def run_sidecar(
    settings: Settings, stop: asyncio.Event | None = None, load: Callable[[], Settings] | None = None
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``); with ``load``, SIGHUP reloads the settings."""
    stop = stop_on_signals(stop)
    reloader = sidecar_reloader(settings, load) if load is not None else None
    for name, cfg in settings.sidecar.named_sinks():
        if isinstance(cfg, XmppSink):
            check_account(name, cfg, settings)  # before anything is opened: one line, exit code 2
    outbox = await Outbox.open(settings.store.path, settings.alerts, settings.store.busy_timeout_ms)
    sidecar = Sidecar(settings, outbox)
    if reloader is not None:
        sidecar.reloader = reloader
        sidecar_applies(reloader, sidecar)
    try:
        with sidecar_metrics(settings, list(sidecar.relays), sidecar.failing) as metrics:
            if metrics is not None:
                sidecar.on_round.append(metrics.round_hook)
                sidecar.on_sinks.append(metrics.sinks_changed)
            await sidecar.run(stop)
    finally:
        sidecar.notifier.stopping("stopping: finishing the current delivery round")
        await sidecar.close()
        await outbox.close()
        sidecar.notifier.close()
        if reloader is not None:
            reloader.close()
    log.info("sidecar stopped")
