"""Publishes in flight and their acknowledgements: a bounded window over one reply subscription.

Each publish carries ``Nats-Expected-Last-Sequence`` (see ``records``), so an acknowledgement of
one message proves that every message sent before it is stored too: the acknowledged position
moves to the newest acknowledged message at once. Anything else (a refusal, no answer within
``ack_timeout``, a message too large) sets :attr:`Window.failure`; the forwarder then stops
sending, waits for the rest, and reconciles with the stream before sending again.

nats-py's own ``publish_async`` is not used: it wraps every publish in ``asyncio.wait_for``, which
costs more than the publish itself; one subscription and a dict of tokens does the same job.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass
from typing import Any

import nats.errors
import orjson
from loguru import logger
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agent.sidecar.forward.stream import MESSAGE_TOO_LARGE, WRONG_LAST_SEQUENCE
from agent.store.changes import SOURCES, Dead, Position, Record

log = logger.bind(component="forward")

#: A flight's state: no answer yet, stored (acknowledged or implied), refused for good, not stored.
_PENDING, _STORED, _DEAD, _REFUSED = 0, 1, 2, 3


@dataclass(slots=True)
class Flight:
    """One published record waiting for its acknowledgement; ``position`` is the position after it."""

    record: Record
    position: Position
    subject: str
    message: bytes
    size: int
    sent_at: float
    state: int = _PENDING


class Window:
    def __init__(self, nc: NATS, acked: Position, max_in_flight: int, ack_timeout: float) -> None:
        self.nc = nc
        self.max_in_flight = max_in_flight
        self._low_water = max_in_flight * 3 // 4
        self.ack_timeout = ack_timeout
        #: The position after the newest message known stored (or dead-lettered), in send order.
        self.acked = acked
        self.last_seq: int | None = None
        self.failure: str | None = None
        #: Records refused for good (too large), to save with the next position.
        self.dead: list[Dead] = []
        self.acks = 0
        self._flights: dict[str, Flight] = {}
        self._room = asyncio.Event()
        self._tokens = itertools.count(1)
        self._prefix = ""
        self._sub: Any = None

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def open(self) -> None:
        inbox = self.nc.new_inbox()
        self._prefix = inbox + "."
        self._sub = await self.nc.subscribe(
            inbox + ".*", cb=self._on_reply, pending_msgs_limit=1_000_000, pending_bytes_limit=256 * 1024 * 1024
        )

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):  # a closed connection: nothing left to unsubscribe
                await sub.unsubscribe()

    async def publish(self, flight: Flight, headers: dict[str, str]) -> bool:
        """Send once there is room; False (nothing sent) once the window has failed."""
        if len(self._flights) >= self.max_in_flight:
            # Wait for a quarter of the window to drain, not one slot: one wake-up per many acks.
            while len(self._flights) > self._low_water and self.failure is None:
                await self._wait(self._until_expiry())
                self.check_expiry()
        if self.failure is not None:
            return False
        token = str(next(self._tokens))
        self._flights[token] = flight
        try:
            await self.nc.publish(flight.subject, flight.message, reply=self._prefix + token, headers=headers)
        except (nats.errors.Error, OSError) as exc:  # closed, or the reconnect buffer is full
            del self._flights[token]
            self._fail(f"cannot publish: {exc or type(exc).__name__}")
            return False
        return True

    async def drain(self) -> None:
        """Wait until every flight is answered or past its ack timeout."""
        while self._flights and any(f.state == _PENDING for f in self._flights.values()):
            if self.check_expiry():
                break
            await self._wait(self._until_expiry())

    def check_expiry(self) -> bool:
        """Whether the oldest unanswered flight is past ``ack_timeout`` (then the window has failed)."""
        for flight in self._flights.values():
            if flight.state == _PENDING:
                if time.monotonic() - flight.sent_at > self.ack_timeout:
                    self._fail(f"no acknowledgement within {self.ack_timeout:g} s (is the stream's leader down?)")
                    return True
                return False
        return False

    def _until_expiry(self) -> float:
        for flight in self._flights.values():
            if flight.state == _PENDING:
                return max(0.01, flight.sent_at + self.ack_timeout - time.monotonic())
        return self.ack_timeout

    async def _wait(self, timeout: float) -> None:
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), timeout)

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    async def _on_reply(self, msg: Msg) -> None:
        flight = self._flights.get(msg.subject[len(self._prefix) :])
        if flight is None or flight.state != _PENDING:
            return  # an answer to a flight already given up
        if msg.headers and msg.headers.get("Status") == "503":
            flight.state = _REFUSED
            self._fail("no responders: the stream has no leader right now")
        else:
            self._answer(flight, msg.data)
        self._settle()

    def _answer(self, flight: Flight, data: bytes) -> None:
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            answer = {"error": {"description": f"unreadable answer {data[:80]!r}"}}
        error = answer.get("error")
        if error is None:
            self.acks += 1
            self.last_seq = answer.get("seq", self.last_seq)
            flight.state = _STORED
            if not answer.get("duplicate"):
                # The chain: JetStream stored this one only after the one before it, and so on.
                for earlier in self._flights.values():
                    if earlier is flight:
                        break
                    if earlier.state == _PENDING:
                        earlier.state = _STORED
            return
        code = error.get("err_code")
        description = error.get("description", str(error))
        if code == MESSAGE_TOO_LARGE:
            record = flight.record
            reason = f"the stream refused it: {description}"
            self.dead.append(
                Dead(record.source, record.id, flight.subject, flight.size, reason, flight.message.decode())
            )
            flight.state = _DEAD
            log.error(
                "record {} {} ({}, {} bytes) cannot be forwarded: {}; kept in forward_dead, the rest flows on",
                SOURCES[record.source], record.id, flight.subject, flight.size, reason,
            )  # fmt: skip
            self._fail("a record was too large for the stream (dead-lettered); resending what followed it")
            return
        flight.state = _REFUSED
        if code == WRONG_LAST_SEQUENCE:
            self._fail("a publish before this one was lost (wrong last sequence); resending from the stream's end")
        else:
            self._fail(f"JetStream refused a publish: {description} (code {code})")

    def _settle(self) -> None:
        """Move ``acked`` over the stored or dead-lettered flights at the head, and forget them."""
        while self._flights:
            token, flight = next(iter(self._flights.items()))
            if flight.state not in (_STORED, _DEAD):
                break  # unanswered, or refused: what follows was sent on a broken chain
            self.acked = flight.position
            del self._flights[token]
        self._room.set()
