"""Paging through the server's message archive (XEP-0313 MAM), after an id and not before a time.

When a stream cannot be resumed (the server's hibernation expired, or its queue overflowed), the
events that were queued for the old session are in offline storage or only in the archive. After a
new session's initial presence, the agent pages through its own archive for messages from the
Monitor API after the last archive id it has committed. The results arrive as messages that a
plugin (``monitor_events``) unwraps and stores like live ones; the store's de-duplication absorbs
the overlap with offline delivery. The session knows those plugins only through
:class:`agent.plugin.Recovering`.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree as ET

from loguru import logger
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout

log = logger.bind(component="archive")

MAM_NS = "urn:xmpp:mam:2"
RSM_NS = "http://jabber.org/protocol/rsm"
DATA_NS = "jabber:x:data"
PAGE = 250


class ArchiveGap(Exception):
    """The archive no longer knows the position we asked for (expired or truncated)."""


def _query(client: ClientXMPP, with_jid: str, after: str | None, start: str | None) -> ET.Element:
    query = ET.Element(f"{{{MAM_NS}}}query", {"queryid": client.new_id()})
    form = ET.SubElement(query, f"{{{DATA_NS}}}x", {"type": "submit"})
    fields = {"FORM_TYPE": MAM_NS, "with": with_jid}
    if start is not None:
        fields["start"] = start
    for var, value in fields.items():
        field = ET.SubElement(form, f"{{{DATA_NS}}}field", {"var": var})
        if var == "FORM_TYPE":
            field.set("type", "hidden")
        ET.SubElement(field, f"{{{DATA_NS}}}value").text = value
    rsm = ET.SubElement(query, f"{{{RSM_NS}}}set")
    ET.SubElement(rsm, f"{{{RSM_NS}}}max").text = str(PAGE)
    if after is not None:
        ET.SubElement(rsm, f"{{{RSM_NS}}}after").text = after
    return query


async def _pages(client: ClientXMPP, with_jid: str, after: str | None, start: str | None) -> int:
    """Page through the archive to its end; the time bound ``start`` stays on every page (an unknown
    ``after`` on ejabberd returns the start of the whole archive, not item-not-found)."""
    pages = 0
    while True:
        iq = client.Iq()
        iq["type"] = "set"
        iq.append(_query(client, with_jid, after, start))
        try:
            result = await iq.send(timeout=60)  # type: ignore[no-untyped-call]
        except IqError as exc:
            if exc.iq["error"]["condition"] == "item-not-found" and after is not None:
                raise ArchiveGap(after) from None
            raise
        pages += 1
        fin = result.xml.find(f"{{{MAM_NS}}}fin")
        last = None if fin is None else fin.find(f"{{{RSM_NS}}}set/{{{RSM_NS}}}last")
        if fin is None or fin.get("complete") == "true" or last is None or not last.text:
            return pages
        after = last.text


@dataclass(frozen=True, slots=True)
class Replay:
    """What one catch-up did: a line for the log, and whether it reached the end of the archive."""

    text: str
    complete: bool


async def replay(client: ClientXMPP, with_jid: str, after: str | None, start: str | None) -> Replay:
    """Replay archived messages from ``with_jid`` after archive id ``after``, and not before ``start``.

    If the archive no longer has ``after``, replay from ``start`` (an RFC 3339 time) instead.
    """
    if after is None and start is None:
        return Replay("no archive position and no time to start from: nothing to catch up", True)
    try:
        try:
            pages = await _pages(client, with_jid, after, start)
            return Replay(f"archive replayed after id {after or '-'} since {start or '-'} ({pages} page(s))", True)
        except ArchiveGap:
            if start is None:
                return Replay(f"archive no longer has id {after} and no time to fall back to", True)
            log.warning("archive no longer has id {}: replaying since {}", after, start)
            pages = await _pages(client, with_jid, None, start)
            return Replay(f"archive replayed since {start} ({pages} page(s))", True)
    except IqError as exc:
        error = exc.iq["error"]
        return Replay(f"archive query refused: {error['condition']} {error['text'] or ''}".strip(), False)
    except IqTimeout:
        return Replay("archive query timed out", False)
