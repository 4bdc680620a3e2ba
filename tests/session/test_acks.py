"""Acknowledgements follow commits, per stream: a barrier of a discarded stream never sets a new stream's position."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.config import StoreSettings, load_settings
from agent.session.acks import UNASKED_EVERY, Acks
from agent.session.client import MonitorClient
from agent.store import Store

# No server here, so nothing to run once per server (the xmpp_server fixtures): these tests drive
# the ack logic with slixmpp's stream-management state and a real store. The server side of acks
# runs on both servers in tests/session/test_faults.py (resumption replays) and test_backpressure.py.


async def test_a_barrier_of_a_discarded_stream_never_positions_the_next_one(tmp_path: Path) -> None:
    """An ack request on stream A whose commit lands after A was discarded leaves stream B's resume count alone."""
    settings = load_settings(
        None, xmpp={"jid": "agent@localhost", "password": "pw"}, store={"path": str(tmp_path / "m.db")}
    )
    store = await Store.open(StoreSettings(path=tmp_path / "m.db", flush_ms=50))
    client = MonitorClient(settings)
    acks = Acks(client, store)
    sm = client.plugin["xep_0198"]
    sm.sm_id, sm.handled = "stream-A", 500
    store.set_state("slow", "x")  # keep the writer busy for a moment so the barrier is still pending
    acks._on_request(None)  # the server asks for an ack on stream A
    client.event("session_end")  # A is discarded before that barrier commits: slixmpp resets sm
    acks.forget()
    sm.sm_id, sm.handled = "stream-B", 0  # a new session enabled stream B
    await asyncio.wait_for(store.barrier(), 10)
    await asyncio.sleep(0.05)  # let the done-callbacks run
    acks.new_attempt()  # a reconnection would now resume stream B from...
    assert sm.handled == 0, "stream B must not resume with stream A's count"
    state = await store.read_state()
    assert state.get("sm_id") in (None, "stream-B")
    await store.close()


async def test_a_long_run_without_ack_request_is_acknowledged_unasked(tmp_path: Path) -> None:
    """ejabberd replays thousands of stanzas after a resumption before its next <r/>: every 100 the agent
    commits and acknowledges on its own, so a connection lost during the replay still moves the position."""
    settings = load_settings(
        None, xmpp={"jid": "agent@localhost", "password": "pw"}, store={"path": str(tmp_path / "m.db")}
    )
    store = await Store.open(StoreSettings(path=tmp_path / "m.db", flush_ms=5))
    client = MonitorClient(settings)
    acks = Acks(client, store)
    sm = client.plugin["xep_0198"]
    sm.sm_id, sm.enabled_in = "stream-A", True
    try:
        for _ in range(UNASKED_EVERY):  # stanzas arrive, the server asks for nothing
            sm.handled += 1
            acks._count_incoming(client.Message())
        await asyncio.sleep(0.05)  # the data being parsed is handed over, then the unasked barrier goes in
        await asyncio.wait_for(store.barrier(), 10)
        await asyncio.sleep(0.05)  # let the done-callbacks run
        assert acks.position == ("stream-A", UNASKED_EVERY)
        state = await store.read_state()
        assert (state.get("sm_id"), state.get("sm_handled")) == ("stream-A", str(UNASKED_EVERY))
    finally:
        await store.close()
