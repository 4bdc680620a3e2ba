"""The XMPP session to the Monitor API: connect, keep alive, reconnect, resume, subscribe.

One :class:`MonitorSession` owns one slixmpp client for the life of the process and decides on
its own when a connection is dead:

* a ping (XEP-0199) every ``keepalive.interval`` seconds; no answer within ``keepalive.timeout``
  aborts the transport. Aborting (not slixmpp's ``reconnect()``, which closes the stream cleanly)
  keeps the server-side session hibernating, so the next connection can resume it (XEP-0198);
* a connection attempt that has not produced a session within ``xmpp.negotiation_timeout``
  (a server frozen mid-negotiation still accepts TCP through the kernel backlog) is aborted;
* after any loss, reconnect with exponential backoff and jitter, reset once a connection was
  stable (:class:`agent.backoff.Backoff`).

Acknowledgements: slixmpp counts a stanza as handled before the application has processed it, so
this module answers the server's ``<r/>`` itself, only once the store has committed everything
received before it, and resumes with the last committed position.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from xml.etree import ElementTree as ET

import orjson
from loguru import logger
from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0198 import stanza as sm_stanza
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from agent.alerts import CONDITION_CODES
from agent.archive import catch_up
from agent.backoff import Backoff
from agent.config import Settings
from agent.events import utc_now
from agent.exceptions import AuthenticationError, NegotiationTimeout, SessionError
from agent.pluginload import load_plugins
from agent.store import Store
from plugins.monitor_events import MonitorEvents

log = logger.bind(component="session")

SM_NS = "urn:xmpp:sm:3"


@dataclass(frozen=True, slots=True)
class SubscribeOutcome:
    result: str  # "ok", "timeout" or "condition (code)"
    retry: bool


def _minus_minutes(stamp: str | None, minutes: int) -> str | None:
    """An archive start time a little before ``stamp``: the server archived before we received."""
    if stamp is None:
        return None
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")) - timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class MonitorClient(ClientXMPP):
    """A slixmpp client set up for the Monitor API: STARTTLS only, verified, no plaintext."""

    def __init__(self, settings: Settings) -> None:
        xmpp = settings.xmpp
        jid = xmpp.jid if "/" in xmpp.jid else f"{xmpp.jid}/{xmpp.resource}"
        super().__init__(jid, xmpp.password.get_secret_value())
        # STARTTLS on the c2s port; without this slixmpp first tries direct TLS on it and logs a
        # spurious failure. Plaintext is refused: the password and API keys must not leak.
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        if xmpp.ca_file is not None:
            self.ca_certs = xmpp.ca_file
        # We ping with XEP-0199 ourselves; whitespace would only hide a dead peer.
        self.whitespace_keepalive = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199", {"keepalive": False})
        self.register_plugin("xep_0198", {"window": 5, "allow_resume": True})


class MonitorSession:
    """Runs the client until ``stop`` is set, reconnecting and resuming by itself."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.client = MonitorClient(settings)
        self.backoff = Backoff(settings.reconnect.initial, settings.reconnect.maximum, settings.reconnect.stable_after)
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.last_rtt: float | None = None
        self._generation = 0
        self._committed_handled: int | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._subscribe_task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._paused = False
        self._install_ack_handler()
        self.client.add_event_handler("disconnected", self._on_disconnected)
        self.client.add_event_handler("session_end", self._on_session_end)
        load_plugins(self.client, settings, store)
        store.backpressure = self._backpressure

    # -- acknowledgements ---------------------------------------------------------------------

    def _install_ack_handler(self) -> None:
        # Replace slixmpp's <r/> handler, which acknowledges stanzas the moment they are parsed.
        self.client.remove_handler("Stream Management Request Ack")
        self.client.register_handler(
            Callback(
                "xmppmon ack after commit",
                MatchXPath(sm_stanza.RequestAck.tag_name()),
                self._on_ack_request,
                instream=True,
            )
        )

    def _on_ack_request(self, _request: Any) -> None:
        sm = self.client.plugin["xep_0198"]
        handled, sm_id, generation = sm.handled, sm.sm_id, self._generation
        done = self.store.barrier(sm_id, handled)
        done.add_done_callback(lambda fut: self._ack_committed(fut, handled, generation))

    def _ack_committed(self, fut: asyncio.Future[None], handled: int, generation: int) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        self._committed_handled = handled
        # An ack for an earlier connection would be a protocol error on this one; the resume
        # request carries the committed position instead.
        if generation == self._generation and self.client.transport is not None:
            self.client.send_raw(f"<a xmlns='{SM_NS}' h='{handled}'/>")

    def _backpressure(self, full: bool) -> None:
        """Stop reading from the socket while the writer is far behind (disk full, locked)."""
        transport = self.client.transport
        if transport is None or full == self._paused:
            return
        self._paused = full
        if full:
            log.warning("writer backlog of {} records: pausing reads", self.store.pending)
            transport.pause_reading()
        else:
            log.info("writer caught up: resuming reads")
            transport.resume_reading()

    # -- the connection loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, stay connected, reconnect; return after a clean shutdown once ``stop`` is set."""
        await self._restore_stream_position()
        self.store.set_state("session", "starting")
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                try:
                    resumed = await self._connect_once(stopping)
                except AuthenticationError as exc:
                    self.store.observe("session", "auth_failure", detail=str(exc))
                    self._record_down(str(exc))
                    log.error("{}", exc)
                except SessionError as exc:
                    self._record_down(str(exc))
                    log.warning("{}", exc)
                else:
                    if stop.is_set():
                        break
                    await self._on_up(resumed)
                    await asyncio.wait(
                        [stopping, asyncio.ensure_future(self._lost.wait())],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if stop.is_set():
                        break
                    self._on_down()
                delay = self.backoff.next_delay()
                self.store.set_state("session", f"retrying in {delay:.0f} s")
                log.info("reconnecting in {:.1f} s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stopping), delay)
        finally:
            stopping.cancel()
            await self._shutdown()

    async def _restore_stream_position(self) -> None:
        state = await self.store.read_state()
        sm_id, handled = state.get("sm_id"), state.get("sm_handled")
        if sm_id and handled is not None and handled.isdigit():
            sm = self.client.plugin["xep_0198"]
            sm.sm_id, sm.handled = sm_id, int(handled)
            self._committed_handled = int(handled)
            log.info("will try to resume stream {} at h={}", sm_id, handled)

    async def _connect_once(self, stopping: asyncio.Future[Any]) -> bool:
        """One attempt: returns True if the stream was resumed, False for a new session."""
        client = self.client
        self._generation += 1
        self._lost.clear()
        sm = client.plugin["xep_0198"]
        if self._committed_handled is not None and sm.sm_id:
            # Resume only from what is on disk; what was received but not committed is sent again
            # by the server and absorbed by the store's de-duplication.
            sm.handled = self._committed_handled
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
            raise NegotiationTimeout(
                f"no XMPP session with {host}:{xmpp.port} after {xmpp.negotiation_timeout:.0f} s"
                " (server frozen or overloaded?)"
            )
        result = outcome.result()
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
        self._paused = False
        now = utc_now()
        self.store.set_state("session", "connected (resumed)" if resumed else "connected")
        self.store.set_state("connected_since", now)
        self.store.set_state("reconnects", self.reconnects)
        self.store.set_state("last_error", None)
        sm = self.client.plugin["xep_0198"]
        if resumed:
            log.info("stream {} resumed at h={}", sm.sm_id, sm.handled)
            self._subscribe_task = asyncio.ensure_future(self._report_resumption())
        else:
            log.info("session started as {}", self.client.boundjid.full)
            # Offline messages are flushed only after initial presence, and a session that queries
            # the archive before it gets none: presence first, then subscriptions and catch-up.
            self.client.send_presence()
            self._subscribe_task = asyncio.ensure_future(self._after_new_session())
        self._keepalive_task = asyncio.ensure_future(self._keepalive(self._generation))

    def _on_down(self) -> None:
        self.connected.clear()
        self.backoff.disconnected()
        self.reconnects += 1
        for task in (self._keepalive_task, self._subscribe_task):
            if task is not None:
                task.cancel()
        reason = self.client.disconnect_reason or "connection lost"
        self._record_down(reason)
        log.warning("disconnected: {}", reason)

    def _record_down(self, reason: str) -> None:
        self.store.observe("session", "disconnected", detail=reason)
        self.store.set_state("session", "disconnected")
        self.store.set_state("last_error", reason)

    def _on_disconnected(self, _event: Any) -> None:
        self._lost.set()

    def _on_session_end(self, _event: Any) -> None:
        # The server discarded the stream (or resumption failed): the position is meaningless now.
        self._committed_handled = None
        self.store.forget_stream()

    # -- keepalive ----------------------------------------------------------------------------

    async def _keepalive(self, generation: int) -> None:
        """Ping the server; abort the transport (keeping the session resumable) if it is silent."""
        keepalive = self.settings.keepalive
        ping = self.client.plugin["xep_0199"]
        while generation == self._generation and self.client.transport is not None:
            await asyncio.sleep(keepalive.interval)
            started = time.monotonic()
            try:
                await ping.send_ping(JID(self.client.boundjid.domain), timeout=keepalive.timeout)
            except IqTimeout:
                log.warning("no answer to ping within {:.0f} s: dropping the connection", keepalive.timeout)
                self.store.count("ping_timeouts")
                self.store.observe("session", "ping_timeout", detail="no answer to ping")
                self.client.disconnect_reason = "ping timeout"
                self.client.abort()
                return
            except IqError:
                pass  # an error answer still proves the server is alive
            self.last_rtt = time.monotonic() - started
            self.store.set_state("last_ping_rtt_ms", round(self.last_rtt * 1000, 1))
            self.store.set_state("last_ping_at", utc_now())

    # -- recovery -----------------------------------------------------------------------------

    async def _after_new_session(self) -> None:
        # Catch-up must not wait for subscriptions: the service may be down for a long time while
        # the archive already holds what it sent before.
        subscribing = asyncio.ensure_future(self._subscribe_all())
        try:
            await self._catch_up()
            await subscribing
        finally:
            subscribing.cancel()

    async def _catch_up(self) -> None:
        plugin = self.client.plugin.get("monitor_events", None)
        if not isinstance(plugin, MonitorEvents):
            return
        plugin.recovered.clear()
        state = await self.store.read_state()
        after = plugin.last_archive_id or state.get("mam_last_id")
        fallback = _minus_minutes(await self.store.last_received_at(), 5)
        outcome = await catch_up(self.client, self.settings.monitor.jid, after, fallback)
        await self.store.barrier()
        log.info(
            "new session: {}; recovered {} event(s) from offline storage and {} from the archive",
            outcome, plugin.recovered["offline"], plugin.recovered["mam"],
        )  # fmt: skip

    async def _report_resumption(self) -> None:
        plugin = self.client.plugin.get("monitor_events", None)
        if not isinstance(plugin, MonitorEvents):
            return
        plugin.recovered.clear()
        # The server replays its queue right after <resumed/>; give it a moment to arrive.
        await asyncio.sleep(2.0)
        await self.store.barrier()
        log.info("stream resumed: {} event(s) replayed by the server", plugin.recovered["resume"])

    # -- subscriptions ------------------------------------------------------------------------

    async def _subscribe_all(self) -> None:
        results: dict[str, str] = {}
        retry = [(app.app, app.key.get_secret_value()) for app in self.settings.monitor.apps]
        backoff = Backoff(initial=1.0, maximum=60.0)
        while retry:
            again = []
            for app, key in retry:
                outcome = await self.subscribe(app, key)
                results[app] = outcome.result
                if outcome.retry:
                    again.append((app, key))
            self.store.set_state("subscriptions", orjson.dumps(results).decode())
            retry = again
            if retry:
                delay = backoff.next_delay()
                log.info("retrying subscription of {} in {:.1f} s", ", ".join(a for a, _ in retry), delay)
                await asyncio.sleep(delay)

    async def subscribe(self, app: str, key: str) -> SubscribeOutcome:
        """Subscribe one application.

        A refusal of type ``wait`` (the service is busy or not there yet) or no answer is worth
        retrying; ``auth``/``cancel``/``modify`` refusals need an operator and are not retried
        until the next session.
        """
        monitor = self.settings.monitor
        iq = self.client.Iq()
        iq["type"] = "set"
        iq["to"] = monitor.jid
        iq.append(ET.Element(f"{{{monitor.namespace}}}subscribe", {"app": app, "key": key}))
        try:
            await iq.send(timeout=monitor.subscribe_timeout)  # type: ignore[no-untyped-call]
        except IqError as exc:
            error = exc.iq["error"]
            condition, code = error["condition"], error["code"] or "?"
            text = error["text"]
            log.bind(app=app).error(
                "subscription of app {} refused: {} ({}){}",
                app, condition, code, f": {text}" if text else "",
            )  # fmt: skip
            self.store.count("subscriptions_refused")
            alert_code = code if code.isdigit() else CONDITION_CODES.get(condition, condition)
            self.store.observe("subscription", alert_code, app=app, detail=f"{condition}: {text}")
            return SubscribeOutcome(f"{condition} ({code})", retry=error["type"] == "wait")
        except IqTimeout:
            log.bind(app=app).error("subscription of app {}: no answer from {}", app, monitor.jid)
            self.store.observe("subscription", "504", app=app, detail=f"no answer from {monitor.jid}")
            return SubscribeOutcome("timeout", retry=True)
        log.bind(app=app).info("subscribed to app {}", app)
        self.store.observe("subscription", "ok", app=app, ok=True)
        return SubscribeOutcome("ok", retry=False)

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
