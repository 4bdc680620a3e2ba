"""Two clients with one account and resource replace each other forever: name it, alert, back off.

The server ends the older stream with the stream error ``conflict`` ("Replaced by new connection"
on ejabberd) each time the other logs in; without this, the log said only "End of stream" and the
repeat filter hid the loop.
"""

from __future__ import annotations

import random
from typing import Any

from loguru import logger
from slixmpp import ClientXMPP

from agent.store import Store

log = logger.bind(component="session")

#: Seconds to wait (plus as much jitter) after the server replaced this session by another client's.
BACKOFF = 30.0


class Conflict:
    def __init__(self, client: ClientXMPP, store: Store, jid: str) -> None:
        self.client = client
        self.store = store
        self.jid = jid
        self.seen = False
        client.add_event_handler("stream_error", self._on_stream_error)

    def _on_stream_error(self, error: Any) -> None:
        if error["condition"] != "conflict":
            return
        self.seen = True
        jid = self.client.boundjid.full or self.jid
        text = error["text"] or "conflict"
        log.error(
            "the server ended the stream: another client logged in as {} ({}); two agents with one account and"
            " resource replace each other forever: run one, or give each its own XMPPMON_XMPP__RESOURCE",
            jid, text,
        )  # fmt: skip
        self.store.observe("session", "session_conflict", detail=f"{jid}: {text}")

    def delay(self, delay: float, rng: random.Random) -> float:
        """The reconnection delay: after a conflict, at least BACKOFF seconds plus jitter."""
        if not self.seen:
            return delay
        self.seen = False
        return max(delay, BACKOFF) + rng.uniform(0, BACKOFF)
