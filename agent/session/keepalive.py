"""Liveness is the session's own decision: XEP-0199 pings, and an abort when the server is silent.

Silent means that nothing at all arrived for ``timeout`` seconds, not that a ping went unanswered:
after a resumption ejabberd replays up to 5,000 queued stanzas before anything else, the answer
to a ping waits behind them, and an abort on the late answer cut every resumed connection before
its position could advance (a livelock, issue 10).

Aborting (not slixmpp's ``reconnect()``, which closes the stream cleanly) keeps the server-side
session hibernating, so the next connection can resume it (XEP-0198).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from loguru import logger
from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout

from agent.config import KeepaliveSettings
from agent.events import utc_now
from agent.store import Store

log = logger.bind(component="session")

#: Seconds slixmpp keeps waiting for a ping's answer at least; liveness is decided by silence (above).
LONG = 120.0


class Keepalive:
    """Pings every ``interval`` seconds; ``last_rtt`` is the newest round-trip time in seconds."""

    def __init__(self, client: ClientXMPP, store: Store, settings: KeepaliveSettings) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.last_rtt: float | None = None
        self.pings = 0  # answered
        self._unawaited: set[asyncio.Task[None]] = set()
        #: Called with each round-trip time in seconds (the session's ``hooks.rtt``).
        self.on_rtt: list[Callable[[float], None]] = []
        #: When the last stanza (or stream element) arrived, and how many arrived: proof of life.
        self.last_received = time.monotonic()
        self.received = 0
        client.add_filter("in", self._on_incoming)

    def _on_incoming(self, stanza: Any) -> Any:
        self.last_received = time.monotonic()
        self.received += 1
        return stanza

    def _send_unawaited(self, ping: Any) -> None:
        async def send() -> None:
            with contextlib.suppress(IqError, IqTimeout):
                await ping.send_ping(JID(self.client.boundjid.domain), timeout=self.settings.interval)

        task = asyncio.ensure_future(send())
        self._unawaited.add(task)
        task.add_done_callback(self._unawaited.discard)

    def _send(self, ping: Any) -> asyncio.Future[Any]:
        """A ping whose answer is awaited by the caller's silence rule, not by slixmpp's timeout."""
        answer: asyncio.Future[Any] = ping.send_ping(
            JID(self.client.boundjid.domain), timeout=max(LONG, 10 * self.settings.timeout)
        )
        answer.add_done_callback(lambda fut: fut.cancelled() or fut.exception())  # always retrieved
        return answer

    def _drop(self) -> None:
        log.warning(
            "no answer to ping and nothing received within {:.1f} s: dropping the connection", self.settings.timeout
        )
        self.store.count("ping_timeouts")
        self.store.observe("session", "ping_timeout", detail="no answer to ping")
        self.client.disconnect_reason = "ping timeout"
        self.client.abort()

    async def run(self, current: Callable[[], bool], paused: Callable[[], bool] = lambda: False) -> None:
        """Ping while ``current()`` says this connection is still the live one.

        While reads are paused on purpose (``paused()``: the writer is far behind), an answer cannot
        be read, so its absence proves nothing: the ping is still sent (the Monitor API drops a
        connection that sends nothing for 10 minutes) and its answer is not awaited.
        """
        ping = self.client.plugin["xep_0199"]
        late_logged = False
        while current() and self.client.transport is not None:
            await asyncio.sleep(self.settings.interval)
            if paused():
                self._send_unawaited(ping)
                continue
            started, received = time.monotonic(), self.received
            answer, late = self._send(ping), False
            while not answer.done() and not paused():  # reads paused meanwhile: its absence proves nothing
                # Silent: nothing at all (the answer included) for ``timeout`` s since the ping went out.
                remaining = max(started, self.last_received) + self.settings.timeout - time.monotonic()
                if remaining <= 0:
                    self._drop()
                    return
                await asyncio.wait([answer], timeout=remaining)
                now = time.monotonic()
                sending = now - self.last_received < self.settings.timeout
                if not answer.done() and not late and sending and now - started >= self.settings.timeout:
                    late = True
                    self.store.count("pings_late")
                    if not late_logged:
                        late_logged = True
                        log.info(
                            "the answer to a ping is late (over {:.1f} s), but the server is sending ({} stanzas"
                            " meanwhile): the answer is queued behind them; keeping the connection (logged once)",
                            self.settings.timeout, self.received - received,
                        )  # fmt: skip
            if not answer.done() or answer.cancelled() or isinstance(answer.exception(), IqTimeout):
                continue  # paused, or unanswered for LONG while the server kept sending: ping again
            self.last_rtt = time.monotonic() - started
            self.pings += 1
            self.store.set_state("last_ping_rtt_ms", round(self.last_rtt * 1000, 1))
            self.store.set_state("last_ping_at", utc_now())
            for listener in self.on_rtt:
                listener(self.last_rtt)
