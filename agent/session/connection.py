"""The connection loop: connect, notice a dead connection, reconnect with backoff, resume, shut down.

One :class:`MonitorSession` owns one slixmpp client for the life of the process and decides on
its own when a connection is dead:

* pings (``agent.session.keepalive``) abort a silent connection without closing the stream;
* a connection attempt that has not produced a session within ``xmpp.negotiation_timeout``
  (a server frozen mid-negotiation still accepts TCP through the kernel backlog) is aborted;
* after any loss, reconnect with exponential backoff and jitter, reset once a connection was
  stable (:class:`agent.session.backoff.Backoff`).

Acknowledgements go out only after commit (``agent.session.acks``); a new session sends presence,
subscribes (``agent.session.subscribe``) and catches up from the archive (``agent.session.catchup``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from loguru import logger

from agent.config import Settings
from agent.events import utc_now
from agent.exceptions import AuthenticationError, NegotiationTimeout, SessionError
from agent.pluginload import load_plugins
from agent.session.acks import SM_NS, Acks
from agent.session.backoff import Backoff
from agent.session.catchup import Recovery
from agent.session.client import MonitorClient
from agent.session.conflict import Conflict
from agent.session.hooks import SessionHooks
from agent.session.keepalive import Keepalive
from agent.session.subscribe import SubscribeOutcome, Subscriber
from agent.store import Store

log = logger.bind(component="session")


class MonitorSession:
    """Runs the client until ``stop`` is set, reconnecting and resuming by itself."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.client = MonitorClient(settings)
        self.backoff = Backoff(settings.reconnect.initial, settings.reconnect.maximum, settings.reconnect.stable_after)
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.acks = Acks(self.client, store)
        self.keepalive = Keepalive(self.client, store, settings.keepalive)
        #: Listeners of up, down, failed attempts and ping round trips (metrics, health).
        self.hooks = SessionHooks()
        self.keepalive.on_rtt.append(lambda rtt: self.hooks.emit(self.hooks.rtt, rtt))
        self.subscriber = Subscriber(self.client, store, settings.monitor)
        self.recovery = Recovery(self.client, store, settings.monitor.jid)
        self._keepalive_task: asyncio.Task[None] | None = None
        self._subscribe_task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.client.add_event_handler("disconnected", self._on_disconnected)
        self.client.add_event_handler("session_end", self._on_session_end)
        self.conflict = Conflict(self.client, store, settings.xmpp.jid)
        load_plugins(self.client, settings, store)

    @property
    def last_rtt(self) -> float | None:
        """The newest ping round-trip time in seconds."""
        return self.keepalive.last_rtt

    async def subscribe(self, app: str, key: str) -> SubscribeOutcome:
        """Subscribe one application (see :meth:`Subscriber.subscribe`)."""
        return await self.subscriber.subscribe(app, key)

    # -- the connection loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, stay connected, reconnect; return after a clean shutdown once ``stop`` is set."""
        await self._restore_stream_position()
        await self.recovery.restore()
        self.store.set_state("session", "starting")
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if self.store.over:
                    await self._wait_for_writer(stopping)
                    continue
                try:
                    resumed = await self._connect_once(stopping)
                except AuthenticationError as exc:
                    self.store.observe("session", "auth_failure", detail=str(exc))
                    self._record_down(str(exc))
                    self.hooks.emit(self.hooks.failed, str(exc))
                    log.error("{}", exc)
                except SessionError as exc:
                    self._record_down(str(exc))
                    self.hooks.emit(self.hooks.failed, str(exc))
                    log.warning("{}", exc)
                else:
                    if stop.is_set():
                        break
                    await self._on_up(resumed)
                    lost = asyncio.ensure_future(self._lost.wait())
                    try:
                        await asyncio.wait([stopping, lost], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        lost.cancel()  # on stop, nothing else would ever end it
                    if stop.is_set():
                        break
                    self._on_down()
                delay = self.conflict.delay(self.backoff.next_delay(), self.backoff.rng)
                self.store.set_state("session", f"retrying in {delay:.0f} s")
                log.info("reconnecting in {:.1f} s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stopping), delay)
        finally:
            stopping.cancel()
            await self._shutdown()

    async def _wait_for_writer(self, stopping: asyncio.Future[Any]) -> None:
        """Do not connect while the writer is far behind: a new connection would only add to it."""
        log.warning("the database is {} records behind: reconnecting once the writer has caught up", self.store.pending)
        self.store.set_state("session", "waiting for the database to catch up")
        while self.store.over and not stopping.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stopping), 1.0)

    async def _restore_stream_position(self) -> None:
        state = await self.store.read_state()
        self.acks.restore(state.get("sm_id"), state.get("sm_handled"))

    async def _connect_once(self, stopping: asyncio.Future[Any]) -> bool:
        """One attempt: returns True if the stream was resumed, False for a new session."""
        client = self.client
        self.acks.new_attempt()
        self.conflict.attempt()
        self.recovery.connecting()
        self._lost.clear()
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def settle(result: str) -> Any:
            def handler(event: Any = None) -> None:
                if not outcome.done():
                    outcome.set_result(result)

            return handler

        handlers = {
            "session_start": settle("started"),
            "session_resumed": settle("resumed"),
            "failed_all_auth": settle("auth"),
            "ssl_invalid_chain": settle("tls"),
            "ssl_invalid_cert": settle("tls"),
            "connection_failed": settle("refused"),
            "disconnected": settle("lost"),
        }
        for name, handler in handlers.items():
            client.add_event_handler(name, handler)
        xmpp = self.settings.xmpp
        host = xmpp.host or client.boundjid.domain
        self.store.set_state("session", f"connecting to {host}:{xmpp.port}")
        try:
            client.connect(host=host, port=xmpp.port)
            done, _ = await asyncio.wait(
                [outcome, stopping], timeout=xmpp.negotiation_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )  # fmt: skip
        finally:
            for name, handler in handlers.items():
                client.del_event_handler(name, handler)
        if stopping in done and outcome not in done:
            self._abort()
            return False
        if outcome not in done:
            self._abort()
            self.conflict.abandoned()
            raise NegotiationTimeout(
                f"no XMPP session with {host}:{xmpp.port} after {xmpp.negotiation_timeout:.0f} s"
                " (server frozen or overloaded?)"
            )
        result = outcome.result()
        if result == "started" and not client.boundjid.resource:
            # slixmpp starts the session even when the server answered the bind request with an
            # error; such a session has no address and receives nothing.
            self._abort()
            raise SessionError(f"the server refused resource binding for {xmpp.jid}: retrying")
        if result in ("started", "resumed"):
            return result == "resumed"
        self._abort()
        if result == "auth":
            raise AuthenticationError(f"the server refused the password for {xmpp.jid}: check XMPPMON_XMPP__PASSWORD")
        if result == "tls":
            raise SessionError(
                f"the certificate of {host} could not be verified for {client.boundjid.domain}:"
                " set XMPPMON_XMPP__CA_FILE to the CA that signed it"
            )
        reason = client.disconnect_reason or "connection closed during negotiation"
        if result == "refused":
            reason = f"cannot connect to {host}:{xmpp.port}"
        raise SessionError(f"{reason}")

    def _abort(self) -> None:
        self.client.cancel_connection_attempt()
        self.client.abort()

    async def _on_up(self, resumed: bool) -> None:
        self.backoff.connected()
        self.connected.set()
        self.store.observe("session", "up", ok=True)
        self.acks.reattach()
        now = utc_now()
        self.store.set_state("session", "connected (resumed)" if resumed else "connected")
        self.store.set_state("connected_since", now)
        self.store.set_state("reconnects", self.reconnects)
        self.store.set_state("last_error", None)
        self.hooks.emit(self.hooks.up, resumed)
        sm = self.client.plugin["xep_0198"]
        if resumed:
            log.info("stream {} resumed at h={}", sm.sm_id, sm.handled)
            self.recovery.resumed()
            self._subscribe_task = asyncio.ensure_future(self._after_resumption())
        else:
            log.info("new session started as {}", self.client.boundjid.full)
            self.recovery.new_session()
            # Offline messages are flushed only after initial presence, and a session that queries
            # the archive before it gets none: presence first, then subscriptions and catch-up.
            self.client.send_presence()
            self._subscribe_task = asyncio.ensure_future(self._after_new_session())
        generation = self.acks.generation
        self._keepalive_task = asyncio.ensure_future(
            self.keepalive.run(lambda: generation == self.acks.generation, lambda: self.acks.paused)
        )

    def _on_down(self) -> None:
        self.connected.clear()
        self.backoff.disconnected()
        self.reconnects += 1
        for task in (self._keepalive_task, self._subscribe_task):
            if task is not None:
                task.cancel()
        reason = self.client.disconnect_reason or "connection lost"
        self._record_down(reason)
        self.hooks.emit(self.hooks.down, reason)
        log.warning("disconnected: {}", reason)

    def _record_down(self, reason: str) -> None:
        self.store.observe("session", "disconnected", detail=reason)
        self.store.set_state("session", "disconnected")
        self.store.set_state("last_error", reason)

    def _on_disconnected(self, _event: Any) -> None:
        self._lost.set()

    def _on_session_end(self, _event: Any) -> None:
        self.acks.forget()

    async def _after_resumption(self) -> None:
        await self.recovery.report_resumption()
        if self.recovery.pending:
            # A catch-up was cut short (a dropped connection cancels it, a crash ends it): the
            # resumed stream only brings what the server queued, not the rest of the archive.
            log.info("a catch-up was interrupted: running it again on the resumed stream")
            await self.recovery.catch_up()

    async def _after_new_session(self) -> None:
        # Catch-up must not wait for subscriptions: the service may be down for a long time while
        # the archive already holds what it sent before.
        subscribing = asyncio.ensure_future(self.subscriber.subscribe_all())
        try:
            await self.recovery.catch_up()
            await subscribing
        finally:
            subscribing.cancel()

    # -- shutdown ----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Commit, acknowledge everything, close the stream so nothing is redelivered."""
        for task in (self._keepalive_task, self._subscribe_task):
            if task is not None:
                task.cancel()
        client = self.client
        if client.transport is None:
            self.store.set_state("session", "stopped")
            return
        sm = client.plugin["xep_0198"]
        handled = sm.handled
        try:
            await asyncio.wait_for(self.store.barrier(sm.sm_id, handled), 10)
        except (TimeoutError, Exception) as exc:
            log.error("could not commit before shutdown ({}): not acknowledging", exc)
            client.abort()
            return
        if sm.enabled_in and client.transport is not None:
            client.send_raw(f"<a xmlns='{SM_NS}' h='{handled}'/>")
        self.store.set_state("sm_id", None)
        self.store.set_state("session", "stopped")
        await client.disconnect(wait=2.0, reason="xmppmon stopping")
        log.info("disconnected cleanly")
