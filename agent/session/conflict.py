"""Two clients with one account and resource replace each other forever: name it, alert, back off.

The server ends the older stream with the stream error ``conflict`` ("Replaced by new connection"
on ejabberd) each time the other logs in; without this, the log said only "End of stream" and the
repeat filter hid the loop.

The other client can be this agent's own past: a connection attempt abandoned after a negotiation
timeout, once authenticated, may still be completed by a slow server (ejabberd finishes a late
``<resume/>`` or bind), and then replaces the session the agent made since. A conflict within
:data:`OWN_WINDOW` seconds of such an abandoned attempt is taken for that: logged as such, no alert,
and the agent reconnects with its usual backoff. A real conflict right after one is misjudged
once; the next is not (the abandoned attempt explains one conflict only).
"""

from __future__ import annotations

import random
import time
from typing import Any

from loguru import logger
from slixmpp import ClientXMPP

from agent.store import Store

log = logger.bind(component="session")

#: Seconds to wait (plus as much jitter) after the server replaced this session by another client's.
BACKOFF = 30.0
#: Seconds after an abandoned, authenticated attempt during which a conflict is blamed on it.
OWN_WINDOW = 120.0


class Conflict:
    def __init__(self, client: ClientXMPP, store: Store, jid: str) -> None:
        self.client = client
        self.store = store
        self.jid = jid
        self.seen = False
        self._authenticated = False  # the current attempt got past SASL: the server may bind/resume it
        self._abandoned_at: float | None = None
        client.add_event_handler("stream_error", self._on_stream_error)
        client.add_event_handler("auth_success", self._on_auth_success)

    def _on_auth_success(self, _event: Any) -> None:
        self._authenticated = True

    def attempt(self) -> None:
        """A connection attempt starts."""
        self._authenticated = False

    def abandoned(self) -> None:
        """The attempt was given up (negotiation timeout): if authenticated, the server may still finish it."""
        if self._authenticated:
            self._abandoned_at = time.monotonic()

    def _on_stream_error(self, error: Any) -> None:
        if error["condition"] != "conflict":
            return
        jid = self.client.boundjid.full or self.jid
        text = error["text"] or "conflict"
        if self._abandoned_at is not None and time.monotonic() - self._abandoned_at < OWN_WINDOW:
            ago = time.monotonic() - self._abandoned_at
            self._abandoned_at = None
            log.warning(
                "the server replaced this session ({}: {}) with the agent's own connection attempt abandoned"
                " {:.0f} s ago after a negotiation timeout (the server completed it late): reconnecting",
                jid, text, ago,
            )  # fmt: skip
            self.store.count("conflicts_own")
            return
        self.seen = True
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
