"""A bare slixmpp receiver that only counts event stanzas: the ceiling the agent is compared with.

Usage: bare_receiver.py JID PASSWORD PORT CA_FILE EXPECTED_STANZAS
Prints "ready" once its session is up, and "done <stanzas> <seconds from first to last>" at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time

from slixmpp import ClientXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath


async def main(jid: str, password: str, port: int, ca_file: str, expected: int) -> None:
    client = ClientXMPP(jid + "/bare", password)
    client.enable_direct_tls = False
    client.ca_certs = ca_file
    client.register_plugin("xep_0198")
    count = 0
    first = 0.0
    done = asyncio.Event()

    def on_event(_msg: object) -> None:
        nonlocal count, first
        if count == 0:
            first = time.perf_counter()
        count += 1
        if count >= expected:
            done.set()

    client.register_handler(
        Callback("count", MatchXPath("{jabber:client}message/{urn:xmppmon:monitor:1}event"), on_event)
    )
    client.connect(host="127.0.0.1", port=port)
    await client.wait_until("session_start", 15)
    client.send_presence()
    print("ready", flush=True)
    await asyncio.wait_for(done.wait(), 600)
    print(f"done {count} {time.perf_counter() - first:.3f}", flush=True)
    await client.disconnect()


if __name__ == "__main__":
    jid, password, port, ca_file, expected = sys.argv[1:6]
    asyncio.run(main(jid, password, int(port), ca_file, int(expected)))
