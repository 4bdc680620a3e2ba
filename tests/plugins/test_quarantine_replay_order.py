"""A malformed event replayed from the server's archive is quarantined once, whatever the attribute order.

Found by the chaos soak (bench/soak.py --seed 1 --minutes 3): the same malformed event, received live
and again in a catch-up from Prosody's archive, gave two quarantine rows. The quarantine's
de-duplication digest covers the raw text (``ET.tostring`` of the element), and Prosody's archive
gives the element's attributes back in another order (``id ts kind app`` live, ``kind app id ts``
from the archive: its stanza attributes are a Lua table), so the digest differs. Both copies come
from the real code path (the plugin's live and archive handlers) into a real SQLite store.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from slixmpp import ClientXMPP
from slixmpp.plugins.base import register_plugin

from agent.config import StoreSettings
from agent.store import Store, connect_readonly
from plugins.monitor_events.plugin import MonitorEvents

NS = "urn:xmppmon:monitor:1"
OWN = "soak@localhost"
MONITOR = "monitor.localhost"
TEXT = '{"device_id": "d-1", "name": &lt;&amp;&gt;'  # not JSON: quarantined


def _live(attrs: str) -> ET.Element:
    return ET.fromstring(
        f"<message xmlns='jabber:client' from='{MONITOR}' to='{OWN}/xmppmon' id='m1'>"
        f"<event xmlns='{NS}' {attrs}>{TEXT}</event></message>"
    )


def _archived(attrs: str) -> ET.Element:
    return ET.fromstring(
        f"<message xmlns='jabber:client' from='{OWN}' to='{OWN}/xmppmon'>"
        "<result xmlns='urn:xmpp:mam:2' queryid='q1' id='A1'><forwarded xmlns='urn:xmpp:forward:0'>"
        "<delay xmlns='urn:xmpp:delay' stamp='2026-11-29T06:59:09Z'/>"
        f"<message xmlns='jabber:client' from='{MONITOR}' to='{OWN}' id='m1'>"
        f"<event xmlns='{NS}' {attrs}>{TEXT}</event></message></forwarded></result></message>"
    )


class _Stanza:
    def __init__(self, xml: ET.Element) -> None:
        self.xml = xml


async def test_the_archived_copy_of_a_quarantined_event_adds_no_row(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=path, flush_ms=1))
    try:
        xmpp = ClientXMPP(f"{OWN}/xmppmon", "unused")
        register_plugin(MonitorEvents, name="monitor_events")
        xmpp.register_plugin("monitor_events", {"store": store, "monitor_jid": MONITOR, "namespace": NS})
        plugin = xmpp.plugin["monitor_events"]
        # As received live, then as Prosody's archive gave it back in the soak.
        plugin._on_message(_Stanza(_live("id='bad-1' ts='2026-11-29T06:59:09.302Z' kind='activity' app='shop'")))
        plugin._on_archived(_Stanza(_archived("kind='activity' app='shop' id='bad-1' ts='2026-11-29T06:59:09.302Z'")))
        await store.barrier()
    finally:
        await store.close()
    conn = connect_readonly(path)
    try:
        rows = conn.execute("SELECT event_id FROM quarantine").fetchall()
        counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    finally:
        conn.close()
    assert [r[0] for r in rows] == ["bad-1"], f"one malformed event, {len(rows)} quarantine rows"
    assert counters.get("quarantined") == 1
    assert counters.get("quarantine_replays") == 1
