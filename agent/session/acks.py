"""Acknowledge after commit (XEP-0198), and stop reading while the writer is far behind.

slixmpp counts a stanza as handled when it is parsed, before any handler ran. This module replaces
its ``<r/>`` handler: the answer ``<a h=…/>`` is sent only once the store has committed everything
received before the request, and the stream id and ``h`` are stored in that same transaction.

The agent also acknowledges without being asked, every ``UNASKED_EVERY`` stanzas: ejabberd replays
its whole queue (up to 5,000 stanzas) after a resumption before it sends the next ``<r/>``, so a
connection lost during that replay would otherwise never move the position.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from loguru import logger
from slixmpp import ClientXMPP
from slixmpp.plugins.xep_0198 import stanza as sm_stanza
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from agent.store import Store

log = logger.bind(component="session")

SM_NS = "urn:xmpp:sm:3"

#: Stanzas received without an ``<r/>`` after which the agent acknowledges unasked (XEP-0198 allows it).
UNASKED_EVERY = 100


class Acks:
    """The committed stream position and the acknowledgements that follow it."""

    def __init__(self, client: ClientXMPP, store: Store) -> None:
        self.client = client
        self.store = store
        #: Bumped on every connection attempt: an ack for an earlier connection is never sent on a later one.
        self.generation = 0
        #: The stream id and ``h`` of the last committed acknowledgement: what a resumption sends.
        #: Kept per stream, so a late barrier of a discarded stream can never position a new one.
        self.position: tuple[str, int] | None = None
        self._discarded: set[str] = set()
        self.paused = False
        # Replace slixmpp's <r/> handler, which acknowledges stanzas the moment they are parsed.
        client.remove_handler("Stream Management Request Ack")
        client.register_handler(
            Callback(
                "xmppmon ack after commit",
                MatchXPath(sm_stanza.RequestAck.tag_name()),
                self._on_request,
                instream=True,
            )
        )
        store.backpressure = self.backpressure
        #: Stanzas received since the last acknowledgement was asked for (or given unasked).
        self._unasked = 0
        self._unasked_scheduled = False
        client.add_filter("in", self._count_incoming)
        #: True from restoring a previous process's position until that stream is resumed or lost.
        self._restored = False
        logging.getLogger("slixmpp.plugins.xep_0198.stream_management").addFilter(self._explain_sequence_numbers)

    def _explain_sequence_numbers(self, record: logging.LogRecord) -> bool:
        """slixmpp logs "Inconsistent sequence numbers from the server" on every resumption by a new
        process: the server's ``h`` counts the stanzas the previous process sent, which this one never
        queued. That is expected and harmless there; said once at INFO instead of as an error."""
        if self._restored and str(record.msg).startswith("Inconsistent sequence numbers"):
            self._restored = False
            log.info("resumed a stream of an earlier process: the server acknowledged what that process sent")
            return False
        return True

    def restore(self, sm_id: str | None, handled: str | None) -> None:
        """Set the position a previous process committed, so the first connection resumes it."""
        if sm_id and handled is not None and handled.isdigit():
            sm = self.client.plugin["xep_0198"]
            sm.sm_id, sm.handled = sm_id, int(handled)
            self.position = (sm_id, int(handled))
            self._restored = True
            log.info("will try to resume stream {} at h={}", sm_id, handled)

    def new_attempt(self) -> None:
        """A connection attempt starts: resume only from what is on disk."""
        self.generation += 1
        sm = self.client.plugin["xep_0198"]
        if self.position is not None and sm.sm_id == self.position[0]:
            # What was received but not committed is sent again by the server and absorbed by the
            # store's de-duplication.
            sm.handled = self.position[1]

    def forget(self) -> None:
        """The server discarded the stream (or resumption failed): its position is meaningless now."""
        self._restored = False
        if self.position is not None:
            self._discarded.add(self.position[0])
        sm_id = self.client.plugin["xep_0198"].sm_id
        if sm_id:
            self._discarded.add(sm_id)
        self.position = None
        self.store.forget_stream()

    def _count_incoming(self, stanza: Any) -> Any:
        self._unasked += 1
        if self._unasked >= UNASKED_EVERY and not self._unasked_scheduled:
            # Not now: this stanza's handlers have not run yet. Once the data being parsed has been
            # handed to the store, a barrier covers every stanza counted in ``h``.
            self._unasked_scheduled = True
            asyncio.get_running_loop().call_soon(self._ack_unasked)
        return stanza

    def _ack_unasked(self) -> None:
        self._unasked_scheduled = False
        sm = self.client.plugin["xep_0198"]
        if self._unasked >= UNASKED_EVERY and sm.enabled_in:
            self._on_request(None)

    def _on_request(self, _request: Any) -> None:
        self._unasked = 0
        sm = self.client.plugin["xep_0198"]
        handled, sm_id, generation = sm.handled, sm.sm_id, self.generation
        done = self.store.barrier(sm_id, handled)
        done.add_done_callback(lambda fut: self._committed(fut, sm_id, handled, generation))

    def _committed(self, fut: asyncio.Future[None], sm_id: str | None, handled: int, generation: int) -> None:
        if fut.cancelled() or fut.exception() is not None or not sm_id or sm_id in self._discarded:
            return  # a barrier of a stream the server discarded positions nothing
        self.position = (sm_id, handled)
        # An ack for an earlier connection would be a protocol error on this one; the resume
        # request carries the committed position instead.
        if generation == self.generation and self.client.transport is not None:
            self.client.send_raw(f"<a xmlns='{SM_NS}' h='{handled}'/>")

    def reattach(self) -> None:
        """A new connection is up: it starts paused if the writer is still over its high-water mark.

        The store signals only when the backlog crosses the mark; a connection made while it stays
        over would otherwise be read without limit.
        """
        self.paused = False
        if self.store.over:
            self.backpressure(True)

    def backpressure(self, full: bool) -> None:
        """Stop reading from the socket while the writer is far behind (disk full, locked)."""
        transport = self.client.transport
        if transport is None or full == self.paused:
            return
        self.paused = full
        if full:
            log.warning(
                "writer backlog of {} records ({:.0f} MB): pausing reads from the server; pings go on"
                " being sent, but their answers are not awaited until reads resume",
                self.store.pending, self.store.backlog_bytes / 1e6,
            )  # fmt: skip
            transport.pause_reading()
        else:
            log.info("writer caught up: resuming reads")
            transport.resume_reading()
