"""The XMPP sink: a message per notification to operator JIDs and/or a MUC room.

It has its own XMPP connection on an account of its own (``jid``/``password``, resource
``xmppmon-sidecar``), on the agent's server settings (host, port, CA). Never the agent's account:
the sink's initial presence would make the server flush the agent's offline messages to the sink,
which drops them; :func:`check_account` refuses it at start-up. A notification is delivered once
every message for it was acknowledged by the server (XEP-0198 ``<a/>`` covering it) or the
recipient sent a receipt (XEP-0184).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Literal

from loguru import logger
from slixmpp import JID, ClientXMPP

from agent.config import Settings, XmppSink
from agent.exceptions import ConfigError
from agent.sidecar.http import Round
from agent.store.outbox import Attempt, Item
from agent.store.sequencing import Policy

log = logger.bind(component="sidecar")


def text(message: dict[str, Any]) -> str:
    """The human-readable message body."""
    a = message["alert"]
    where = " ".join(p for p in (a.get("app"), a.get("api")) if p)
    head = f"[{message['transition'].upper()}] {a['severity']} {a['source']} {a['code']}"
    lines = [f"{head}{' ' + where if where else ''}: {a['meaning']}",
             f"count {a['count']} since {a['first_seen']}, last {a['last_seen']}"]  # fmt: skip
    if a.get("detail"):
        lines.append(f"detail: {a['detail']}")
    if message["transition"] != "resolved":
        lines.append(f"advice: {a['advice']}")
    lines.append(f"id: {message['id']}")
    return "\n".join(lines)


def check_account(name: str, cfg: XmppSink, settings: Settings) -> tuple[str, str]:
    """The sink's bare JID and password; ConfigError if it has none or it is the agent's account."""
    if not cfg.jid or cfg.password is None:  # the settings model already requires both
        raise ConfigError(f"xmpp sink {name!r} in XMPPMON_SIDECAR__SINKS needs an account of its own (jid, password)")
    bare = JID(cfg.jid).bare
    if bare == JID(settings.xmpp.jid).bare:
        raise ConfigError(
            f"xmpp sink {name!r} in XMPPMON_SIDECAR__SINKS logs in as {bare}, the agent's own account"
            " (XMPPMON_XMPP__JID): give the sink an account of its own, or its presence would draw"
            " the agent's offline messages"
        )
    return bare, cfg.password.get_secret_value()


class XmppRelay:
    """One slixmpp client kept connected; :meth:`deliver` waits for acks or receipts."""

    #: People read these: every transition, in order (a pending repeat may be superseded).
    order: Policy = "ordered"

    def __init__(self, name: str, cfg: XmppSink, settings: Settings) -> None:
        self.name, self.cfg, self.settings = name, cfg, settings
        jid, password = check_account(name, cfg, settings)
        self.client = ClientXMPP(f"{jid}/{cfg.resource}", password)
        self.client.enable_direct_tls = False
        self.client.enable_starttls = True
        self.client.enable_plaintext = False
        if settings.xmpp.ca_file is not None:
            self.client.ca_certs = settings.xmpp.ca_file
        self.client.register_plugin("xep_0030")
        self.client.register_plugin("xep_0198", {"window": 5, "allow_resume": True})
        self.client.register_plugin("xep_0184", {"auto_request": True, "auto_ack": False})
        if cfg.room:
            self.client.register_plugin("xep_0045")
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._up = asyncio.Event()
        self.client.add_event_handler("stanza_acked", self._acked)
        self.client.add_event_handler("receipt_received", self._receipt)
        self.client.add_event_handler("session_start", self._started)
        self.client.add_event_handler("session_resumed", lambda _: self._up.set())
        self.client.add_event_handler("disconnected", lambda _: self._up.clear())

    async def _started(self, _event: Any) -> None:
        self.client.send_presence()
        if self.cfg.room:
            await self.client.plugin["xep_0045"].join_muc_wait(JID(self.cfg.room), self.cfg.nick, maxstanzas=0)
        self._up.set()

    def _settle(self, stanza_id: str, how: str) -> None:
        future = self._waiting.get(stanza_id)
        if future is not None and not future.done():
            future.set_result(how)

    def _acked(self, stanza: Any) -> None:
        if stanza.name == "message":
            self._settle(stanza["id"], "xep-0198 ack")

    def _receipt(self, msg: Any) -> None:
        self._settle(msg["receipt"], "xep-0184 receipt")

    async def connect(self) -> bool:
        if self._up.is_set():
            return True
        xmpp = self.settings.xmpp
        self.client.connect(host=xmpp.host or self.client.boundjid.domain, port=xmpp.port)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), xmpp.negotiation_timeout)
        return self._up.is_set()

    async def deliver(self, items: list[Item]) -> Round:
        rnd = Round()
        started = time.time()
        if not await self.connect():
            for item in items:
                rnd.attempts.append(Attempt(item, "retry", started, time.time(), "not connected",
                                            next_attempt_at=time.time() + self.cfg.park_seconds))  # fmt: skip
            self.client.abort()
            rnd.pause = self.cfg.park_seconds
            return rnd
        targets = [(jid, "chat") for jid in self.cfg.jids]
        if self.cfg.room:
            targets.append((self.cfg.room, "groupchat"))
        per_item: list[tuple[Item, list[asyncio.Future[str]]]] = []
        kinds: dict[str, Literal["chat", "groupchat"]] = {"chat": "chat", "groupchat": "groupchat"}
        loop = asyncio.get_running_loop()
        for item in items:
            futures = []
            for n, (jid, kind) in enumerate(targets):
                msg = self.client.make_message(mto=jid, mbody=text(item.message()), mtype=kinds[kind])
                msg["id"] = f"{item.key}.{n}"
                future: asyncio.Future[str] = loop.create_future()
                self._waiting[msg["id"]] = future
                futures.append(future)
                msg.send()
            per_item.append((item, futures))
        all_futures = [f for _, fs in per_item for f in fs]
        # slixmpp writes an <r/> (send_raw) ahead of the stanza being sent, so the server's answer
        # may not cover the last messages yet: ask again until everything is confirmed.
        deadline = time.monotonic() + self.cfg.timeout
        pending = set(all_futures)
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0)
            self.client.plugin["xep_0198"].request_ack()  # type: ignore[no-untyped-call]
            _, pending = await asyncio.wait(pending, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
        finished = time.time()
        for item, futures in per_item:
            if all(f.done() for f in futures):
                how = ", ".join(sorted({f.result() for f in futures}))
                rnd.attempts.append(Attempt(item, "delivered", started, finished, None,
                                            {"diag_info": how}))  # fmt: skip
                rnd.delivered += 1
            else:
                rnd.attempts.append(Attempt(item, "retry", started, finished,
                                            "no XEP-0198 ack or XEP-0184 receipt in time",
                                            next_attempt_at=finished + self.cfg.park_seconds))  # fmt: skip
                rnd.pause = self.cfg.park_seconds
            for n in range(len(targets)):
                self._waiting.pop(f"{item.key}.{n}", None)
        return rnd

    async def close(self) -> None:
        if self.client.transport is not None:
            await self.client.disconnect(wait=2.0)
        else:
            self.client.cancel_connection_attempt()
