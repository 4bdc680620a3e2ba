"""The Monitor API emulator: the service side of DESIGN.md §3, for demos, tests and benchmarks.

It is an XEP-0114 external component. It answers ``<subscribe/>`` and ``<unsubscribe/>`` IQs
and streams ``<message>`` stanzas of ``<event/>`` elements, either to the JIDs given with
``--to`` or to the bare JID of each successful subscriber. The stream is paced by a token bucket,
can mix in malformed events and duplicates, and can log every valid event it sent so that a
test can compare it with the agent's database.

Stanzas are built as text and written with ``send_raw``: going through slixmpp's stanza objects
costs several times more per event, and the emulator feeds the benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from loguru import logger
from slixmpp import ComponentXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from slixmpp.xmlstream.stanzabase import StanzaBase
from slixmpp.xmlstream.xmlstream import NotConnectedError

from agent.exceptions import AuthenticationError, NegotiationTimeout, SessionError
from agent.lab.emulator.options import EmulatorOptions, EmulatorReport
from agent.lab.emulator.stream import Streamer
from agent.lab.emulator.wire import CONDITIONS, OK, iq_reply_xml

LOST = "The connection to the XMPP server was lost while streaming: is the server still running?"


# --- the component --------------------------------------------------------------------------


def decide(apps: dict[str, str], refuse: dict[str, int], app: str | None, key: str | None) -> int:
    """The answer to a subscribe: OK (200) or an XEP-0086 code."""
    if not app:
        return 400
    if app in refuse:
        return refuse[app]
    if app not in apps:
        return 404
    if key != apps[app]:
        return 401
    return OK


class MonitorComponent(ComponentXMPP):
    """The component: answers (un)subscribe IQs and keeps the set of subscribers."""

    def __init__(self, options: EmulatorOptions, report: EmulatorReport) -> None:
        # slixmpp leaves ComponentXMPP.__init__ unannotated.
        super().__init__(  # type: ignore[no-untyped-call]
            options.jid, options.secret, options.host, options.port
        )
        self.options = options
        self.report = report
        # bare JID -> app -> monotonic time from which it may receive events
        self.subscribers: dict[str, dict[str, float]] = {}
        self.changed = asyncio.Event()
        ns = options.namespace
        for verb in ("subscribe", "unsubscribe"):
            self.register_handler(
                Callback(
                    f"monitor {verb}",
                    MatchXPath(f"{{{self.default_ns}}}iq/{{{ns}}}{verb}"),
                    self._on_subscribe if verb == "subscribe" else self._on_unsubscribe,
                )
            )

    def _answer(self, iq: StanzaBase, code: int) -> None:
        self.send_raw(iq_reply_xml(iq["id"], self.options.jid, str(iq["from"]), code))

    def _on_subscribe(self, iq: StanzaBase) -> None:
        elem = iq.xml.find(f"{{{self.options.namespace}}}subscribe")
        if elem is None or iq["type"] in ("result", "error"):
            return
        app, key = elem.get("app"), elem.get("key")
        code = decide(self.options.apps, self.options.refuse, app, key)
        if iq["type"] != "set":
            code = 400
        subscriber = iq["from"].bare
        self._answer(iq, code)
        if code != OK:
            self.report.subscribes_refused += 1
            logger.info(
                "Refused subscribe of app {} from {}: {} {}.",
                app,
                subscriber,
                code,
                CONDITIONS[code][0],
            )
            return
        self.report.subscribes_ok += 1
        # A subscriber that reconnects and subscribes again keeps its place in the stream.
        start = time.monotonic() + self.options.start_delay
        self.subscribers.setdefault(subscriber, {}).setdefault(str(app), start)
        self.changed.set()
        logger.info("Subscribed {} to app {}.", subscriber, app)

    def _on_unsubscribe(self, iq: StanzaBase) -> None:
        elem = iq.xml.find(f"{{{self.options.namespace}}}unsubscribe")
        if elem is None or iq["type"] in ("result", "error"):
            return
        app = elem.get("app")
        subscriber = iq["from"].bare
        apps = self.subscribers.get(subscriber, {})
        if app:
            apps.pop(app, None)
        else:
            apps.clear()
        if not apps:
            self.subscribers.pop(subscriber, None)
        self._answer(iq, OK)
        self.changed.set()
        logger.info("Unsubscribed {} from {}.", subscriber, app or "every app")

    def targets(self, now: float) -> dict[str, list[str]]:
        """app -> JIDs that should receive its events now."""
        out: dict[str, list[str]] = {}
        for jid, apps in self.subscribers.items():
            for app, since in apps.items():
                if since <= now:
                    out.setdefault(app, []).append(jid)
        return out

    def buffered(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        if self.transport is None:
            raise SessionError(LOST)
        return int(self.transport.get_write_buffer_size())


async def _connect(xmpp: MonitorComponent, options: EmulatorOptions) -> None:
    """Connect and complete the XEP-0114 handshake, or raise a SessionError saying why.

    A ``conflict`` stream error means the previous connection of this component is still being
    torn down by the server (a quick restart): that is retried until ``connect_timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.connect_timeout
    where = f"{options.host}:{options.port}"
    while True:
        outcome: asyncio.Future[str] = loop.create_future()

        def settle(reason: str, outcome: asyncio.Future[str] = outcome) -> Callable[[Any], None]:
            def handler(data: Any) -> None:
                if not outcome.done():
                    if reason == "stream_error":
                        with contextlib.suppress(Exception):
                            if data["condition"] == "conflict":
                                outcome.set_result("conflict")
                                return
                    outcome.set_result(reason)

            return handler  # noqa: B023 - removed before the next iteration rebinds it

        handlers = {e: settle(e) for e in ("session_start", "connection_failed", "stream_error", "disconnected")}
        for event, handler in handlers.items():
            xmpp.add_event_handler(event, handler)
        xmpp.connect(options.host, options.port)
        try:
            reason = await asyncio.wait_for(outcome, max(0.1, deadline - loop.time()))
        except TimeoutError:
            xmpp.cancel_connection_attempt()
            xmpp.abort()
            raise NegotiationTimeout(
                f"The XMPP server at {where} did not accept component {options.jid} within "
                f"{options.connect_timeout:g} s: check that it is running and that its component "
                "port is the one given with --port."
            ) from None
        finally:
            for event, handler in handlers.items():
                xmpp.del_event_handler(event, handler)
        if reason == "session_start":
            return
        xmpp.cancel_connection_attempt()
        xmpp.abort()
        if reason == "conflict" and loop.time() < deadline:
            logger.info("Component {} is still connected on the server; retrying.", options.jid)
            await asyncio.sleep(0.2)
            continue
        break
    if reason == "connection_failed":
        raise SessionError(
            f"Cannot connect to the XMPP server's component port at {where}: "
            "check --host and --port and that the server is running."
        )
    raise AuthenticationError(
        f"The XMPP server at {where} refused component {options.jid}: check --jid and "
        "--secret against its Component definition."
    )


async def _drain(xmpp: MonitorComponent, timeout: float = 60.0) -> None:
    """Wait until the transport has handed every byte to the kernel."""
    deadline = time.monotonic() + timeout
    while xmpp.transport is not None and xmpp.buffered() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


async def run(options: EmulatorOptions, stop: asyncio.Event | None = None) -> EmulatorReport:
    """Connect, serve subscribes, stream until count, duration or ``stop``; then flush and leave."""
    report = EmulatorReport()
    stop = stop or asyncio.Event()
    xmpp = MonitorComponent(options, report)
    for jid in options.to:
        xmpp.subscribers[jid] = dict.fromkeys(options.apps, 0.0)
    log = options.event_log.open("a", encoding="utf-8") if options.event_log else None
    try:
        await _connect(xmpp, options)
        logger.info(
            "Component {} connected to {}:{}; apps {}.",
            options.jid,
            options.host,
            options.port,
            ", ".join(sorted(options.apps)),
        )
        now = started = time.monotonic()
        for apps in xmpp.subscribers.values():  # --to targets start after the delay too
            for app in apps:
                apps[app] = now + options.start_delay
        deadline = now + options.duration if options.duration else float("inf")
        streamer = Streamer(xmpp, options, report, log)
        try:
            await streamer.run(stop, deadline)
        except NotConnectedError:
            raise SessionError(LOST) from None
        await _drain(xmpp)
        report.elapsed = time.monotonic() - started
        logger.info(
            "Done: {} events, {} duplicates, {} malformed in {} stanzas in {:.2f} s.",
            report.events_sent,
            report.duplicates_sent,
            report.malformed_sent,
            report.stanzas_sent,
            report.elapsed,
        )
        if xmpp.transport is not None:
            # The server closes its stream only after processing everything before our footer. A
            # busy server (archiving thousands of stanzas) may take a while; aborting earlier would
            # make it drop what it has not read yet, and the event log would list events that
            # never reached it.
            closed = asyncio.Event()
            xmpp.add_event_handler("disconnected", lambda _e: closed.set())
            wait = max(10.0, report.stanzas_sent / 50)
            await xmpp.disconnect(wait=wait)
            if not closed.is_set():
                logger.error(
                    "The server did not close its stream within {:.0f} s: the last events sent may not have"
                    " reached it.",
                    wait,
                )
    finally:
        if log is not None:
            log.close()
        if xmpp.transport is not None:
            xmpp.abort()
    return report
