"""Persist the Monitor API's event stream: every ``<event/>`` of every message from the service.

Payload-only messages do not fire slixmpp's ``message`` event (it wants a ``<body>``), so this
plugin registers a handler that matches the event element itself. Valid events go to the store in
one call per stanza; each invalid one goes to quarantine with its reason, and the valid events of
the same stanza are kept.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar
from xml.etree import ElementTree as ET

from loguru import logger
from slixmpp.plugins.base import BasePlugin
from slixmpp.stanza import Message
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from agent.events import Event, InvalidEvent, parse_event, utc_now
from agent.store import Quarantined, Store

log = logger.bind(component="plugin.monitor_events")

#: Raw text kept in quarantine for one event, so a hostile payload cannot bloat the database.
MAX_RAW_CHARS = 256 * 1024
#: At most one "foreign sender" line per this many seconds, however hard the flood.
FOREIGN_LOG_EVERY = 10.0


class MonitorEvents(BasePlugin):  # type: ignore[misc]  # slixmpp ships no type information
    """Validate Monitor API events and hand them to the store; quarantine the invalid ones."""

    name = "monitor_events"
    description = "xmppmon: persist Monitor API events"
    dependencies: ClassVar[set[str]] = set()
    default_config: ClassVar[dict[str, Any]] = {
        "store": None,  # agent.store.Store
        "monitor_jid": "monitor.localhost",
        "namespace": "urn:xmppmon:monitor:1",
        "max_payload_bytes": 64 * 1024,
    }

    def plugin_init(self) -> None:
        if not isinstance(self.store, Store):
            raise TypeError("monitor_events needs the store in its configuration")
        self._tag = f"{{{self.namespace}}}event"
        self._monitor = str(self.monitor_jid).lower()
        self._foreign_dropped = 0
        self._foreign_logged_at = 0.0
        self.xmpp.register_handler(
            Callback(
                "xmppmon monitor events",
                MatchXPath(f"{{{self.xmpp.default_ns}}}message/{self._tag}"),
                self._on_message,
            )
        )

    def plugin_end(self) -> None:
        self.xmpp.remove_handler("xmppmon monitor events")

    def _on_message(self, msg: Message) -> None:
        xml = msg.xml
        sender = xml.get("from") or ""
        store: Store = self.store
        store.count("stanzas")
        if sender.split("/", 1)[0].lower() != self._monitor:
            self._foreign(sender)
            return
        if xml.get("type") == "error":
            store.count("error_stanzas")
            log.warning("the Monitor API returned an error message: {}", _short(xml))
            return
        received_at = utc_now()
        valid: list[Event] = []
        limit = self.max_payload_bytes
        for element in xml.iterfind(self._tag):
            attrs = element.attrib
            try:
                valid.append(parse_event(attrs, element.text, limit))  # type: ignore[arg-type]
            except InvalidEvent as exc:
                store.submit_quarantine(
                    Quarantined(
                        exc.reason,
                        _raw(element),
                        sender,
                        (attrs.get("id") or None) and attrs["id"][:128],
                        (attrs.get("app") or None) and attrs["app"][:128],
                        received_at,
                    )
                )
        if valid:
            store.submit_events(valid, received_at)

    def _foreign(self, sender: str) -> None:
        self.store.count("foreign_stanzas")
        self._foreign_dropped += 1
        now = time.monotonic()
        if now - self._foreign_logged_at >= FOREIGN_LOG_EVERY:
            log.warning(
                "dropped {} event stanza(s) from senders other than {} (latest: {:.100})",
                self._foreign_dropped,
                self._monitor,
                sender,
            )
            self._foreign_dropped = 0
            self._foreign_logged_at = now


def _raw(element: ET.Element) -> str:
    text = ET.tostring(element, encoding="unicode")
    if len(text) > MAX_RAW_CHARS:
        return text[:MAX_RAW_CHARS] + f"… [truncated, {len(text)} characters in all]"
    return text


def _short(xml: ET.Element) -> str:
    return ET.tostring(xml, encoding="unicode")[:200]
