"""Catch up from the server's message archive (XEP-0313 MAM) after an outage.

When a stream cannot be resumed (the server's hibernation expired, or its queue overflowed), the
events that were queued for the old session are in offline storage or only in the archive. After a
new session's initial presence, the agent pages through its own archive for messages from the
Monitor API after the last archive id it has committed. The results arrive as messages that a
plugin (``monitor_events``) unwraps and stores like live ones; the store's de-duplication absorbs
the overlap with offline delivery. The session knows those plugins only through
:class:`agent.plugin.Recovering`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from xml.etree import ElementTree as ET

from loguru import logger
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout

from agent.plugin import recovering
from agent.store import Store

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
        after, start = last.text, None


async def catch_up(client: ClientXMPP, with_jid: str, after: str | None, fallback_start: str | None) -> str:
    """Replay archived messages from ``with_jid`` after archive id ``after``.

    If the archive no longer has ``after``, replay from ``fallback_start`` (an RFC 3339 time)
    instead. Returns a one-line description of what was done, for the log.
    """
    if after is None and fallback_start is None:
        return "no archive position yet: nothing to catch up"
    try:
        try:
            pages = await _pages(client, with_jid, after, None if after else fallback_start)
            return f"archive replayed after id {after or fallback_start} ({pages} page(s))"
        except ArchiveGap:
            if fallback_start is None:
                return f"archive no longer has id {after} and no time to fall back to"
            log.warning("archive no longer has id {}: replaying since {}", after, fallback_start)
            pages = await _pages(client, with_jid, None, fallback_start)
            return f"archive replayed since {fallback_start} ({pages} page(s))"
    except IqError as exc:
        error = exc.iq["error"]
        return f"archive query refused: {error['condition']} {error['text'] or ''}".strip()
    except IqTimeout:
        return "archive query timed out"


def _minus_minutes(stamp: str | None, minutes: int) -> str | None:
    """An archive start time a little before ``stamp``: the server archived before we received."""
    if stamp is None:
        return None
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")) - timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Recovery:
    """After a new session, replay the archive; after a resumption, report what the server replayed."""

    def __init__(self, client: ClientXMPP, store: Store, monitor_jid: str) -> None:
        self.client = client
        self.store = store
        self.monitor_jid = monitor_jid

    async def catch_up(self) -> None:
        plugins = recovering(self.client)
        if not plugins:
            return
        for plugin in plugins:
            plugin.recovered.clear()
        state = await self.store.read_state()
        after = next((p.last_archive_id for p in plugins if p.last_archive_id), None) or state.get("mam_last_id")
        fallback = _minus_minutes(await self.store.last_received_at(), 5)
        outcome = await catch_up(self.client, self.monitor_jid, after, fallback)
        await self.store.barrier()
        log.info(
            "new session: {}; recovered {} event(s) from offline storage and {} from the archive",
            outcome, sum(p.recovered["offline"] for p in plugins), sum(p.recovered["mam"] for p in plugins),
        )  # fmt: skip

    async def report_resumption(self) -> None:
        plugins = recovering(self.client)
        if not plugins:
            return
        for plugin in plugins:
            plugin.recovered.clear()
        # The server replays its queue right after <resumed/>; give it a moment to arrive.
        await asyncio.sleep(2.0)
        await self.store.barrier()
        log.info("stream resumed: {} event(s) replayed by the server", sum(p.recovered["resume"] for p in plugins))
