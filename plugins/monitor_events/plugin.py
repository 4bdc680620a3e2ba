"""Persist the Monitor API's event stream: every ``<event/>`` of every message from the service.

Payload-only messages do not fire slixmpp's ``message`` event (it wants a ``<body>``), so this
plugin registers a handler that matches the event element itself. Valid events go to the store in
one call per stanza; each invalid one goes to quarantine with its reason, and the valid events of
the same stanza are kept.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, ClassVar
from xml.etree import ElementTree as ET

from loguru import logger
from slixmpp.plugins.base import BasePlugin
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from agent.plugin import Event, InvalidEvent, Quarantined, Store, normalise_ts, parse_event, utc_now

log = logger.bind(component="plugin.monitor_events")

MAM_NS = "urn:xmpp:mam:2"
FORWARD_NS = "urn:xmpp:forward:0"
SID_NS = "urn:xmpp:sid:0"
DELAY_NS = "urn:xmpp:delay"

#: Raw text kept in quarantine for one event, so a hostile payload cannot bloat the database.
MAX_RAW_CHARS = 256 * 1024
#: At most one "foreign sender" line per this many seconds, however hard the flood.
FOREIGN_LOG_EVERY = 10.0


class MonitorEvents(BasePlugin):
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
        #: Set by the session (agent.plugin.Recovering): whether a live message's archive id may
        #: advance the stored archive position (only while the live stream continues the archive).
        self.track_live = False
        #: Set by the session: whether the current stream was resumed (its delayed stanzas are the
        #: server's replay) or is a new session (its delayed stanzas come from offline storage).
        self.resumed_stream = False
        #: Events recovered per path since the last reset: resume, offline, mam.
        self.recovered: Counter[str] = Counter()
        ns = self.xmpp.default_ns
        self.xmpp.register_handler(
            Callback("xmppmon monitor events", MatchXPath(f"{{{ns}}}message/{self._tag}"), self._on_message)
        )
        self.xmpp.register_handler(
            Callback("xmppmon archived events", MatchXPath(f"{{{ns}}}message/{{{MAM_NS}}}result"), self._on_archived)
        )

    def plugin_end(self) -> None:
        self.xmpp.remove_handler("xmppmon monitor events")
        self.xmpp.remove_handler("xmppmon archived events")

    def _own_bare(self) -> str:
        return str(self.xmpp.boundjid.bare).lower()

    def _on_message(self, msg: StanzaBase) -> None:
        self._process(msg.xml, via=None, archive_id=None, archived_at=None)

    def _on_archived(self, msg: StanzaBase) -> None:
        """A message replayed from our own archive (XEP-0313): unwrap it and process the original."""
        outer = msg.xml
        sender = (outer.get("from") or "").lower()
        if sender and sender != self._own_bare():
            self._foreign(sender)  # only our own server may replay our archive
            return
        result = outer.find(f"{{{MAM_NS}}}result")
        forwarded = None if result is None else result.find(f"{{{FORWARD_NS}}}forwarded")
        inner = None if forwarded is None else forwarded.find(f"{{{self.xmpp.default_ns}}}message")
        if result is None or forwarded is None or inner is None or inner.find(self._tag) is None:
            return
        delay = forwarded.find(f"{{{DELAY_NS}}}delay")
        self._process(inner, via="mam", archive_id=result.get("id"), archived_at=archive_time(delay))

    def _process(self, xml: ET.Element, via: str | None, archive_id: str | None, archived_at: str | None) -> None:
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
        if via is None:
            via = self._delivery_path(xml)
        if archive_id is None:
            stanza_id = xml.find(f"{{{SID_NS}}}stanza-id")
            if stanza_id is not None and (stanza_id.get("by") or "").lower() == self._own_bare():
                archive_id = stanza_id.get("id")
        received_at = utc_now()
        valid: list[Event] = []
        limit, tag = self.max_payload_bytes, self._tag
        for element in xml:  # direct children: several times cheaper than iterfind's ElementPath
            if element.tag != tag:
                continue
            attrs = element.attrib
            try:
                valid.append(parse_event(attrs, element.text, limit))
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
            if via is not None:
                self.recovered[via] += len(valid)
                store.count(f"events_via_{via}", len(valid))
        if archive_id and (via == "mam" or self.track_live):
            # Written in the same commit as this stanza's events, so it never runs ahead of them;
            # archived replays come in archive order, live messages only count without a gap.
            store.set_state("mam_last_id", archive_id)
            store.set_state("mam_last_at", archived_at or received_at)

    def _delivery_path(self, xml: ET.Element) -> str | None:
        """None for live delivery; 'resume' or 'offline' for a delayed one (XEP-0203).

        Servers mark the two differently (Prosody: the delay's ``from`` is our bare JID for a
        resumption's replay and the domain for offline storage; ejabberd: the domain for both, with
        the text "Resent" or "Offline Storage", and "Resent" also on a queue that went to offline
        storage). What decides is the stream: offline storage is flushed only into a new session,
        a resumption's replay only into a resumed stream.
        """
        if xml.find(f"{{{DELAY_NS}}}delay") is None:
            return None
        return "resume" if self.resumed_stream else "offline"

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


def archive_time(delay: ET.Element | None) -> str | None:
    """The archive time of a MAM result (its XEP-0203 delay stamp), in the store's format."""
    stamp = None if delay is None else delay.get("stamp")
    if not stamp:
        return None
    try:
        return normalise_ts(stamp)
    except ValueError:
        return None


def _raw(element: ET.Element) -> str:
    text = ET.tostring(element, encoding="unicode")
    if len(text) > MAX_RAW_CHARS:
        return text[:MAX_RAW_CHARS] + f"… [truncated, {len(text)} characters in all]"
    return text


def _short(xml: ET.Element) -> str:
    return ET.tostring(xml, encoding="unicode")[:200]
