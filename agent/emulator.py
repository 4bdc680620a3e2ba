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

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from loguru import logger
from slixmpp import ComponentXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from slixmpp.xmlstream.stanzabase import StanzaBase
from slixmpp.xmlstream.xmlstream import NotConnectedError

from agent.emulator_data import (
    CONDITIONS,
    KINDS,
    NAMESPACE,
    OK,
    EventFactory,
    iq_reply_xml,
    message_xml,
    utc_ts,
)
from agent.exceptions import AuthenticationError, ConfigError, NegotiationTimeout, SessionError

LOST = "The connection to the XMPP server was lost while streaming: is the server still running?"
MAX_BATCH = 1000  # ~200 B per event keeps a stanza well under Prosody's 512 KiB component limit
_HIGH_WATER = 4 * 1024 * 1024  # bytes queued in the transport before the producer waits
_LOW_WATER = 1024 * 1024
_YIELD_EVERY = 32  # stanzas between two yields to the loop when unpaced
_PROGRESS_EVERY = 5.0


@dataclass
class EmulatorOptions:
    """Everything ``xmppmon emulate`` can be told; see ``add_arguments`` for each option's help."""

    secret: str = ""
    jid: str = "monitor.localhost"
    host: str = "127.0.0.1"
    port: int = 5347
    namespace: str = NAMESPACE
    apps: dict[str, str] = field(default_factory=lambda: {"demo": "demo-key"})
    refuse: dict[str, int] = field(default_factory=dict)
    to: list[str] = field(default_factory=list)
    rate: float = 0.0
    batch: int = 1
    count: int = 0
    duration: float = 0.0
    kinds: tuple[str, ...] = KINDS
    malformed: float = 0.0
    duplicates: float = 0.0
    api_status: int | None = None
    event_log: Path | None = None
    seed: int | None = None
    start_delay: float = 0.0
    connect_timeout: float = 15.0

    def __repr__(self) -> str:  # keeps the secret and the API keys out of logs and tracebacks
        return f"EmulatorOptions(jid={self.jid!r}, apps={sorted(self.apps)!r}, to={self.to!r})"


@dataclass
class EmulatorReport:
    """What one run sent and answered; ``elapsed`` runs from the handshake to the last byte
    handed to the kernel (before the stream is closed)."""

    events_sent: int = 0
    duplicates_sent: int = 0
    malformed_sent: int = 0
    stanzas_sent: int = 0
    subscribes_ok: int = 0
    subscribes_refused: int = 0
    elapsed: float = 0.0


# --- pacing ---------------------------------------------------------------------------------


class Pacer:
    """A token bucket in events: ``rate`` per second, holding at most ``burst``.

    The bound on the bucket bounds catch-up: after a stall the stream resumes at most ``burst``
    events ahead of the steady pace instead of bursting everything it owes.
    """

    def __init__(self, rate: float, burst: float, now: float, initial: float = 0.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = min(burst, initial)
        self.last = now

    def available(self, now: float) -> int:
        """Events that may be sent now (unbounded when the rate is 0)."""
        if self.rate <= 0:
            return 1 << 62
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return int(self.tokens)

    def take(self, n: int) -> None:
        """Record that ``n`` events went out."""
        if self.rate > 0:
            self.tokens -= n

    def delay(self, wanted: int) -> float:
        """Seconds until ``wanted`` events are available (call after ``available``)."""
        if self.rate <= 0 or self.tokens >= wanted:
            return 0.0
        return (min(wanted, self.burst) - self.tokens) / self.rate


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


# --- the run --------------------------------------------------------------------------------


class _Streamer:
    """The producing loop: composes stanzas, paces them, logs and counts them."""

    def __init__(
        self,
        xmpp: MonitorComponent,
        options: EmulatorOptions,
        report: EmulatorReport,
        log: TextIO | None,
    ) -> None:
        self.xmpp, self.options, self.report, self.log = xmpp, options, report, log
        self.factory = EventFactory(options)
        self.pending_dups: dict[str, list[str]] = {}  # app -> events to send again
        # Counted from totals rather than accumulated, so 0.1 of 100 events is exactly 10.
        self.valid_n = self.dups_made = self.mal_made = 0
        self.msg_n = 0
        self.app_n = 0
        self.tag = f"{self.factory.rng.getrandbits(32):08x}"
        self._last_events, self._last_time = 0, time.monotonic()

    def stanza(self, app: str, n: int, now: float) -> tuple[str, list[str]]:
        """Events XML for one stanza: earlier duplicates of ``app``, ``n`` new valid events with
        the malformed ones owed; and the event-log lines of the valid ones."""
        o, f = self.options, self.factory
        ts = utc_ts(now)
        parts = self.pending_dups.pop(app, [])
        self.report.duplicates_sent += len(parts)
        lines = []
        oversize_used = False
        for _ in range(n):
            eid, kind, xml = f.valid(app, ts)
            parts.append(xml)
            lines.append(f"{eid}\t{kind}\t{app}\n")
            self.valid_n += 1
            if o.duplicates and int(self.valid_n * o.duplicates + 1e-9) > self.dups_made:
                self.dups_made += 1
                self.pending_dups.setdefault(app, []).append(xml)
            if o.malformed:
                while int(self.valid_n * o.malformed + 1e-9) > self.mal_made:
                    self.mal_made += 1
                    # One oversize event per stanza keeps it under the server's size limit.
                    name, bad = f.malformed(app, ts, allow_oversize=not oversize_used)
                    oversize_used = oversize_used or name == "oversize"
                    parts.append(bad)
                    self.report.malformed_sent += 1
        self.report.events_sent += n
        return "".join(parts), lines

    def send(self, jids: list[str], events: str, lines: list[str]) -> None:
        """Write one stanza per recipient, then its valid events to the log (in send order)."""
        for jid in jids:
            self.msg_n += 1
            self.xmpp.send_raw(message_xml(self.options.jid, jid, f"{self.tag}-{self.msg_n}", (events,)))
        self.report.stanzas_sent += len(jids)
        if self.log is not None:
            self.log.writelines(lines)

    async def backpressure(self) -> None:
        """Wait while the transport holds more than a few MB that the server has not read."""
        if self.xmpp.buffered() > _HIGH_WATER:
            while self.xmpp.buffered() > _LOW_WATER:
                await asyncio.sleep(0.002)

    def progress(self, now: float) -> None:
        report = self.report
        rate = (report.events_sent - self._last_events) / (now - self._last_time)
        logger.info(
            "Sent {} events in {} stanzas ({:.0f} events/s).",
            report.events_sent,
            report.stanzas_sent,
            rate,
        )
        self._last_events, self._last_time = report.events_sent, now
        if self.log is not None:
            self.log.flush()

    async def run(self, stop: asyncio.Event, deadline: float) -> None:
        """Stream until ``count`` valid events went out, ``deadline`` passed or ``stop`` is set."""
        o, report = self.options, self.report
        now = time.monotonic()
        pacer = Pacer(o.rate, max(float(o.batch), o.rate * 0.25), now, initial=o.batch)
        self._last_time = now
        since_yield = 0
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline or (o.count and report.events_sent >= o.count):
                break
            if now - self._last_time >= _PROGRESS_EVERY:
                self.progress(now)
            targets = self.xmpp.targets(now)
            if not targets:
                self.xmpp.buffered()  # raises if the connection is gone
                await self._wait_for_targets(stop, deadline, now)
                continue
            n = min(o.batch, o.count - report.events_sent) if o.count else o.batch
            if pacer.available(now) < n:
                await asyncio.sleep(min(max(pacer.delay(n), 0.001), deadline - now))
                continue
            apps = sorted(targets)
            app = apps[self.app_n % len(apps)]
            self.app_n += 1
            events, lines = self.stanza(app, n, time.time())
            self.send(targets[app], events, lines)
            pacer.take(n)
            await self.backpressure()
            since_yield += 1
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
        targets = self.xmpp.targets(time.monotonic())
        for app, dups in self.pending_dups.items():  # the duplicates still owed
            if app in targets:
                report.duplicates_sent += len(dups)
                self.send(targets[app], "".join(dups), [])
        self.pending_dups.clear()

    async def _wait_for_targets(self, stop: asyncio.Event, deadline: float, now: float) -> None:
        """Sleep until a subscriber may change things, ``stop`` is set or a second passed."""
        starts = [t - now for apps in self.xmpp.subscribers.values() for t in apps.values()]
        timeout = min([deadline - now, 1.0, *(t for t in starts if t > 0)])
        self.xmpp.changed.clear()
        waiters = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self.xmpp.changed.wait()),
        ]
        await asyncio.wait(waiters, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()


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
        streamer = _Streamer(xmpp, options, report, log)
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
            # The server closes its stream only after processing everything before our footer.
            await xmpp.disconnect(wait=10.0)
    finally:
        if log is not None:
            log.close()
        if xmpp.transport is not None:
            xmpp.abort()
    return report


# --- command line ---------------------------------------------------------------------------


def _app_key(text: str) -> tuple[str, str]:
    name, sep, key = text.partition(":")
    if not (name and sep and key):
        raise argparse.ArgumentTypeError(f"expected NAME:KEY, got {text.split(':')[0]!r}:…")
    return name, key


def _refusal(text: str) -> tuple[str, int]:
    app, sep, code = text.rpartition("=")
    if not (app and sep and code.isdigit() and int(code) in CONDITIONS):
        codes = ", ".join(map(str, CONDITIONS))
        raise argparse.ArgumentTypeError(f"expected APP=CODE with CODE one of {codes}: {text!r}")
    return app, int(code)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text}")
    return value


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {', '.join(sorted(unknown)) or '(none given)'}; known: {', '.join(KINDS)}"
        )
    return kinds


def _batch(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"expected 1..{MAX_BATCH} events per stanza, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to the ``emulate`` sub-parser."""
    d = EmulatorOptions()
    a = parser.add_argument
    a("--jid", default=d.jid, help="component JID (default %(default)s)")
    a(
        "--secret",
        default=None,
        help="component secret (default: $XMPPMON_EMULATOR_SECRET); prefer the variable, "
        "command lines are visible to every user",
    )
    a("--host", default=d.host, help="XMPP server address (default %(default)s)")
    a("--port", type=int, default=d.port, help="server's component port (default %(default)s)")
    a("--namespace", default=d.namespace, help="Monitor API namespace (default %(default)s)")
    a(
        "--app",
        dest="apps",
        action="append",
        type=_app_key,
        metavar="NAME:KEY",
        help="an application and its API key, repeatable (default demo:demo-key)",
    )
    a(
        "--refuse",
        action="append",
        type=_refusal,
        default=[],
        metavar="APP=CODE",
        help="answer this app's subscribe with the XMPP error for CODE, repeatable",
    )
    a(
        "--to",
        action="append",
        default=[],
        metavar="JID",
        help="stream to this JID from the start, without waiting for a subscribe; repeatable",
    )
    a("--rate", type=float, default=d.rate, help="events per second, 0 = as fast as possible")
    a("--batch", type=_batch, default=d.batch, help="events per stanza (default %(default)s)")
    a("--count", type=int, default=d.count, help="valid events to send, 0 = unlimited")
    a("--duration", type=float, default=d.duration, help="seconds to run, 0 = unlimited")
    a("--kinds", type=_kinds, default=d.kinds, help=f"comma list (default {','.join(KINDS)})")
    a(
        "--malformed",
        type=_fraction,
        default=d.malformed,
        help="malformed events added per valid event, 0..1",
    )
    a(
        "--duplicates",
        type=_fraction,
        default=d.duplicates,
        help="fraction of valid events sent again in a later stanza, 0..1",
    )
    a(
        "--api-status",
        type=int,
        default=None,
        metavar="CODE",
        help="force the status of every api event (default: a realistic mix)",
    )
    a(
        "--event-log",
        type=Path,
        default=None,
        metavar="FILE",
        help="append '<id>\\t<kind>\\t<app>' per valid event sent, in send order",
    )
    a("--seed", type=int, default=None, help="seed for reproducible events")
    a(
        "--start-delay",
        type=float,
        default=d.start_delay,
        help="seconds between a subscriber appearing and its first event",
    )


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    """Build the options from parsed arguments; a missing secret is a ConfigError."""
    secret = args.secret or os.environ.get("XMPPMON_EMULATOR_SECRET", "")
    if not secret:
        raise ConfigError("The emulator needs the component secret: set XMPPMON_EMULATOR_SECRET or pass --secret.")
    return EmulatorOptions(
        secret=secret,
        jid=args.jid,
        host=args.host,
        port=args.port,
        namespace=args.namespace,
        apps=dict(args.apps) if args.apps else {"demo": "demo-key"},
        refuse=dict(args.refuse),
        to=list(args.to),
        rate=args.rate,
        batch=args.batch,
        count=args.count,
        duration=args.duration,
        kinds=args.kinds,
        malformed=args.malformed,
        duplicates=args.duplicates,
        api_status=args.api_status,
        event_log=args.event_log,
        seed=args.seed,
        start_delay=args.start_delay,
    )
