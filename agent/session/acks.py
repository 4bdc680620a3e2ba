"""Acknowledge after commit (XEP-0198), and stop reading while the writer is far behind.

slixmpp counts a stanza as handled when it is parsed, before any handler ran. This module replaces
its ``<r/>`` handler: the answer ``<a h=…/>`` is sent only once the store has committed everything
received before the request, and the stream id and ``h`` are stored in that same transaction.
"""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger
from slixmpp import ClientXMPP
from slixmpp.plugins.xep_0198 import stanza as sm_stanza
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from agent.store import Store

log = logger.bind(component="session")

SM_NS = "urn:xmpp:sm:3"


class Acks:
    """The committed stream position and the acknowledgements that follow it."""

    def __init__(self, client: ClientXMPP, store: Store) -> None:
        self.client = client
        self.store = store
        #: Bumped on every connection attempt: an ack for an earlier connection is never sent on a later one.
        self.generation = 0
        #: The ``h`` of the last committed acknowledgement, what a resumption must send.
        self.committed_handled: int | None = None
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

    def restore(self, sm_id: str | None, handled: str | None) -> None:
        """Set the position a previous process committed, so the first connection resumes it."""
        if sm_id and handled is not None and handled.isdigit():
            sm = self.client.plugin["xep_0198"]
            sm.sm_id, sm.handled = sm_id, int(handled)
            self.committed_handled = int(handled)
            log.info("will try to resume stream {} at h={}", sm_id, handled)

    def new_attempt(self) -> None:
        """A connection attempt starts: resume only from what is on disk."""
        self.generation += 1
        sm = self.client.plugin["xep_0198"]
        if self.committed_handled is not None and sm.sm_id:
            # What was received but not committed is sent again by the server and absorbed by the
            # store's de-duplication.
            sm.handled = self.committed_handled

    def forget(self) -> None:
        """The server discarded the stream (or resumption failed): its position is meaningless now."""
        self.committed_handled = None
        self.store.forget_stream()

    def _on_request(self, _request: Any) -> None:
        sm = self.client.plugin["xep_0198"]
        handled, sm_id, generation = sm.handled, sm.sm_id, self.generation
        done = self.store.barrier(sm_id, handled)
        done.add_done_callback(lambda fut: self._committed(fut, handled, generation))

    def _committed(self, fut: asyncio.Future[None], handled: int, generation: int) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        self.committed_handled = handled
        # An ack for an earlier connection would be a protocol error on this one; the resume
        # request carries the committed position instead.
        if generation == self.generation and self.client.transport is not None:
            self.client.send_raw(f"<a xmlns='{SM_NS}' h='{handled}'/>")

    def backpressure(self, full: bool) -> None:
        """Stop reading from the socket while the writer is far behind (disk full, locked)."""
        transport = self.client.transport
        if transport is None or full == self.paused:
            return
        self.paused = full
        if full:
            log.warning("writer backlog of {} records: pausing reads", self.store.pending)
            transport.pause_reading()
        else:
            log.info("writer caught up: resuming reads")
            transport.resume_reading()
