"""The forwarder: every committed record to the JetStream stream, exactly once, never blocking the agent.

One round: connect, check (or create) the stream, read its last message to learn where it stands,
then publish the change log from there through a bounded :class:`Window`, saving the acknowledged
position (``forward_cursor``) every few hundred milliseconds. Any failure ends the round: the window
is drained, the position saved, and the next round starts again from the stream's own end. While
the cluster is unreachable the records simply wait in SQLite; the watch task publishes the lag and
raises ``forward_lagging`` past ``max_lag_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time

from loguru import logger

from agent.alerts import Observation
from agent.config import Settings
from agent.exceptions import ForwardError
from agent.sidecar.forward.records import EXPECTED_LAST_SEQ, MSG_ID, POSITION, Shaper, advance, encode_position
from agent.sidecar.forward.records import headers_size as _headers_size
from agent.sidecar.forward.stream import Stream, connected
from agent.sidecar.forward.window import Flight, Window
from agent.store.changes import SOURCES, ChangeLog, Dead, Position, Record
from agent.store.outbox import Outbox

log = logger.bind(component="forward")

_SAVE_EVERY = 0.2  # seconds between two saves of the acknowledged position while publishing
_READ_BATCH = 500  # records read per source per query
_YIELD_EVERY = 200  # publishes between two yields to the other tasks of the sidecar


def default_account(settings: Settings) -> str:
    return settings.forward.account or settings.xmpp.jid.split("@", 1)[0]


class Forwarder:
    def __init__(self, settings: Settings, outbox: Outbox | None = None) -> None:
        self.settings = settings
        self.cfg = settings.forward
        self.outbox = outbox
        self.shaper = Shaper(default_account(settings), self.cfg.subject)
        self.sources = range(len(SOURCES)) if self.cfg.alerts else range(len(SOURCES) - 1)
        self.acked: Position = (0, 0, 0, 0)
        self.lag = 0.0
        self.pending = 0
        self.state = "starting"
        self.problem: str | None = None
        self.lagging = False
        self._forwarded = 0
        self._window: Window | None = None
        self._log: ChangeLog | None = None
        self._saved: Position | None = None
        self._last_save = 0.0
        self._trouble_logged = 0.0

    @property
    def position(self) -> Position:
        """The acknowledged position, live while a window is open."""
        return self._window.acked if self._window is not None else self.acked

    @property
    def forwarded(self) -> int:
        """Records acknowledged by the stream since this process started."""
        return self._forwarded + (self._window.acks if self._window is not None else 0)

    async def run(self, stop: asyncio.Event) -> None:
        self._log = await ChangeLog.open(self.settings.store.path, self.settings.store.busy_timeout_ms)
        try:
            self.acked = await self._log.cursor()
            self.lagging = self.outbox is not None and await self.outbox.is_firing("forward_lagging")
            log.info(
                "forwarding to stream {} on {} as {} from {}",
                self.cfg.stream, ", ".join(self.cfg.nats_urls), self.shaper.account, encode_position(self.acked),
            )  # fmt: skip
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch(stop))
                tasks.create_task(self._forward(stop))
        finally:
            with contextlib.suppress(Exception):
                await self._save(force=True)
                self.state = "stopped"
                self.lag, self.pending = await self._log.waiting(self.acked, self.sources)
                await self._log.save(None, [], self.status())
            await self._log.close()

    # -- the rounds --------------------------------------------------------------------------

    async def _forward(self, stop: asyncio.Event) -> None:
        delay = 0.5
        name = f"xmppmon-sidecar {self.shaper.account}"
        while not stop.is_set():
            try:
                async with connected(self.cfg, name) as nc:
                    stream = Stream(nc, self.cfg, self.shaper)
                    await stream.ensure()
                    while not stop.is_set():
                        if await self._round(stream, stop):
                            delay = 0.5
                        await self._sleep(stop, delay)
                        delay = min(delay * 2, 5.0)
                        if nc.is_closed:
                            break
            except ForwardError as exc:
                self._trouble("refused" if exc.refused else "unreachable", str(exc))
            except sqlite3.Error as exc:  # the database is locked or failing: the records are safe, wait
                self._trouble("retrying", f"cannot use the database {self.settings.store.path}: {exc}")
            except Exception as exc:  # a bug: say where, once, and keep the sidecar's other work going
                if str(exc) != self.problem:
                    log.opt(exception=exc).critical("unexpected error in the forwarder; retrying")
                self.state, self.problem = "retrying", str(exc)
            await self._sleep(stop, delay)
            delay = min(max(delay * 2, 1.0), 30.0)

    async def _round(self, stream: Stream, stop: asyncio.Event) -> bool:
        """Reconcile, then publish until stopped or failed; True if anything was acknowledged."""
        assert self._log is not None
        behind = await self._log.behind(self.acked, self.sources)
        if behind:
            raise ForwardError(
                f"the newest row of {', '.join(behind)} is below the forward cursor: rows past it were deleted"
                " (not through retention_guard) or the database was replaced, so new rows would reuse ids"
                " already forwarded; check the database, then fix forward_cursor or use a new stream",
                refused=True,
            )
        where = await stream.state()
        if where.position is not None:
            if where.position != self.acked:
                log.info(
                    "stream {} ends at {} (sequence {}); resuming from there",
                    stream.name, encode_position(where.position), where.last_seq,
                )  # fmt: skip
            self.acked = where.position
            await self._save(force=True)
        elif where.last_seq and any(self.acked):
            log.warning(
                "stream {} holds no readable message of ours (sequence {}); resuming from the saved cursor,"
                " so records acknowledged in the last moments before a crash may be sent again (the stream's"
                " duplicate window discards them)", stream.name, where.last_seq,
            )  # fmt: skip
        window = Window(stream.nc, self.acked, self.cfg.max_in_flight, self.cfg.ack_timeout)
        await window.open()
        self._window = window
        try:
            await self._pump(window, where.last_seq, where.max_size, stop)
            await window.drain()
        finally:
            self.acked = window.acked
            try:
                await self._save(force=True)
            finally:
                self._forwarded += window.acks
                self._window = None
                await window.close()
        if window.failure is not None and not stop.is_set():
            self._trouble("retrying", window.failure)
        return window.acks > 0

    async def _pump(self, window: Window, last_seq: int, max_size: int, stop: asyncio.Event) -> None:
        assert self._log is not None
        sent = self.acked
        expected = last_seq
        skip = await self._log.dead_above(sent)
        poll = self.cfg.poll_ms / 1000
        count = 0
        while not stop.is_set() and window.failure is None:
            if window.acks and self.state != "forwarding":
                self._ok()  # healthy (again) only once the stream acknowledged something
            records = await self._log.read(sent, self.sources, _READ_BATCH)
            if not records:
                if window.in_flight == 0:
                    window.acked = sent  # only skipped (dead-lettered) records were left
                    if self.state != "forwarding":
                        self._ok()  # caught up
                self.acked = window.acked
                await self._save()
                window.check_expiry()
                await self._sleep(stop, poll)
                continue
            for record in records:
                position = advance(sent, record)
                if (record.source, record.id) in skip:
                    sent = position
                    continue
                subject = self.shaper.subject(record)
                msg_id = self.shaper.msg_id(record)
                message = self.shaper.body(record, msg_id)
                headers = {MSG_ID: msg_id, EXPECTED_LAST_SEQ: str(expected), POSITION: encode_position(position)}
                size = len(message) + _headers_size(headers)
                if size > max_size:
                    self._dead_letter(window, record, subject, size, max_size, message)
                    sent = position
                    continue
                flight = Flight(record, position, subject, message, size, time.monotonic())
                if not await window.publish(flight, headers):
                    return
                expected += 1
                sent = position
                count += 1
                if count % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                    self.acked = window.acked
                    await self._save()

    def _dead_letter(self, window: Window, record: Record, subject: str, size: int, limit: int, message: bytes) -> None:
        reason = f"{size} bytes is over the server's max_payload of {limit} bytes"
        log.error(
            "record {} {} ({}) cannot be forwarded: {}; kept in forward_dead, the rest flows on",
            SOURCES[record.source], record.id, subject, reason,
        )  # fmt: skip
        window.dead.append(Dead(record.source, record.id, subject, size, reason, message.decode()))

    # -- progress, lag and the alert ---------------------------------------------------------

    async def _save(self, force: bool = False) -> None:
        """Save the acknowledged position, with the dead letters it passes, at most every _SAVE_EVERY s."""
        assert self._log is not None
        window = self._window
        dead = window.dead if window is not None else []
        now = time.monotonic()
        if not force and not dead and (self.acked == self._saved or now - self._last_save < _SAVE_EVERY):
            return
        self._last_save = now
        taken = list(dead)
        await self._log.save(self.acked, taken, {}, self.sources)
        del dead[: len(taken)]
        self._saved = self.acked

    async def _watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._check_lag()
            except sqlite3.Error as exc:  # locked past busy_timeout: try again next second
                log.warning("cannot record the forwarding lag: {}", exc)
            await self._sleep(stop, 1.0)

    async def _check_lag(self) -> None:
        assert self._log is not None
        self.lag, self.pending = await self._log.waiting(self.position, self.sources)
        await self._log.save(None, [], self.status())
        over = self.lag > self.cfg.max_lag_seconds
        if over != self.lagging and self.outbox is not None:
            detail = f"{self.lag:.0f} s behind, {self.pending} record(s) waiting; {self.problem or self.state}"
            if over:
                log.error("forwarding lags: {}", detail)
            else:
                log.info("forwarding caught up ({:.1f} s behind)", self.lag)
            await self.outbox.observe([Observation("sidecar", "forward_lagging", ok=not over, detail=detail)])
            self.lagging = over

    def status(self) -> dict[str, object]:
        """What ``forward_state`` shows (``xmppmon status``, metrics)."""
        return {
            "state": self.state, "lag_seconds": round(self.lag, 3), "pending": self.pending,
            "stream": self.cfg.stream, "account": self.shaper.account, "forwarded": self.forwarded,
            "position": encode_position(self.position), "error": self.problem,
        }  # fmt: skip

    def _trouble(self, state: str, problem: str) -> None:
        """Log a problem once while it lasts: an error if an operator must act, else a warning.

        While the state stays the same, a differently worded problem (another server refusing the
        connection during one outage) is logged at most once a minute.
        """
        now = time.monotonic()
        if state != self.state or (problem != self.problem and now - self._trouble_logged > 60):
            level = "ERROR" if state == "refused" else "WARNING"
            log.log(level, "forwarding to NATS held back: {}; records wait in the database", problem)
            self._trouble_logged = now
        self.state, self.problem = state, problem

    def _ok(self) -> None:
        if self.problem is not None:
            log.info("forwarding to stream {} again", self.cfg.stream)
        self.state, self.problem = "forwarding", None
        self._trouble_logged = 0.0

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
