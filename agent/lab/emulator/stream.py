"""Streaming events to subscribers: a token-bucket pacer and the streamer that writes the wire text."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from loguru import logger

from agent.lab.emulator.options import EmulatorOptions, EmulatorReport
from agent.lab.emulator.wire import EventFactory, message_xml, utc_ts

if TYPE_CHECKING:
    from agent.lab.emulator.component import MonitorComponent

_HIGH_WATER = 4 * 1024 * 1024  # bytes queued in the transport before the producer waits
_LOW_WATER = 1024 * 1024
_YIELD_EVERY = 32  # stanzas between two yields to the loop when unpaced
_PROGRESS_EVERY = 5.0


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


# --- the run --------------------------------------------------------------------------------


class Streamer:
    """The producing loop: composes stanzas, paces them, logs and counts them."""

    def __init__(
        self,
        xmpp: MonitorComponent,
        options: EmulatorOptions,
        report: EmulatorReport,
        log: TextIO | None,
        factory: Callable[[EmulatorOptions], EventFactory] = EventFactory,
    ) -> None:
        self.xmpp, self.options, self.report, self.log = xmpp, options, report, log
        self.factory = factory(options)
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
        self.factory.sent()

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
