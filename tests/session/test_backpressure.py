"""Backpressure across reconnects: while the database cannot keep up, the backlog stays bounded, and nothing is lost."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from agent.app import lifespan
from agent.lab import emulator
from agent.lab.servers import XmppServer

from ..conftest import emulator_options, make_settings, new_account, running, wait_until
from .test_faults import assert_exactly_once

pytestmark = pytest.mark.timeout(300)

LIMIT = 2000


async def test_backlog_stays_bounded_across_connection_cuts_and_pings(
    private_xmpp_server: XmppServer, tmp_path: Path
) -> None:
    """Commits blocked (database locked), the connection cut three times: reads stay paused, nothing lost after."""
    server, db, log = private_xmpp_server, tmp_path / "m.db", tmp_path / "sent.log"
    account = new_account(server)
    settings = make_settings(
        server, db, account,
        store={"max_backlog_records": LIMIT, "max_commit_records": 500, "busy_timeout_ms": 50},
        keepalive={"interval": 0.5, "timeout": 1},
    )  # fmt: skip
    stop = asyncio.Event()
    async with lifespan(settings) as app, running(app.session.run(stop)):
        await wait_until(app.session.connected.is_set, what="connected")
        await wait_until(lambda: db.exists(), what="database")
        # The agent's writer may hold the lock for a moment: wait for it (a loaded machine is slow), in
        # a thread: waiting on the event loop would stall the writer's transaction that holds the lock.
        locker = sqlite3.connect(db, isolation_level=None, timeout=60, check_same_thread=False)
        await asyncio.to_thread(locker.execute, "BEGIN IMMEDIATE")  # every commit of the agent now fails
        stream = asyncio.ensure_future(
            emulator.run(emulator_options(server, to=[account[0]], count=30_000, batch=10, rate=3000, event_log=log))
        )
        try:
            await wait_until(lambda: app.session.acks.paused, timeout=60, what="reads paused")
            peak = 0
            for cut in range(300):  # watch the backlog until the stream ends; cut the connection 3 times
                if cut in (0, 40, 80):
                    app.session.client.abort()  # the TCP connection is cut
                peak = max(peak, app.store.pending)
                if stream.done() and cut > 80:
                    break
                await asyncio.sleep(0.05)
            # Bounded: the limit, plus what one read and the server's resumption replay can add.
            assert peak <= LIMIT + 6000, f"backlog reached {peak} records of the 30,000 streamed"
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        await stream
        await assert_exactly_once(db, log, timeout=120)
        stop.set()
    conn = sqlite3.connect(db)
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    conn.close()
    assert counters["events_received"] >= counters.get("events_duplicate", 0)
