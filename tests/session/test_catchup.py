"""Archive catch-up under overlapping faults: the stored archive position only covers what was replayed without a gap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.lab import emulator

from ..agentproc import AgentProcess
from ..conftest import emulator_options, new_account, own_server, wait_until
from .test_faults import assert_exactly_once, spawn, stored  # noqa: F401 - spawn is a fixture

pytestmark = pytest.mark.timeout(480)


async def test_kill_during_a_long_catch_up_with_live_traffic_loses_nothing(
    xmpp_server_kind: str,
    tmp_path: Path,
    spawn: Callable[..., Awaitable[AgentProcess]],  # noqa: F811 - the fixture imported above
) -> None:
    """kill -9 in the middle of a catch-up of thousands of archived stanzas while live traffic flows: all found after restart."""
    with own_server(xmpp_server_kind, tmp_path / "server", hibernation_time=1) as server:
        db, log = tmp_path / "m.db", tmp_path / "sent.log"
        account = new_account(server)
        # Archive queries keep a busy server from answering pings for a while: a patient keepalive.
        agent = await spawn(server, db, account, XMPPMON_KEEPALIVE__INTERVAL="5", XMPPMON_KEEPALIVE__TIMEOUT="15")
        await wait_until(lambda: "catch-up:" in agent.text(), what="first catch-up done")
        assert agent.stop() == 0
        # While the agent is away, thousands of stanzas go to the archive (Prosody: only there, a client
        # that has used the archive gets nothing through offline storage; ejabberd: the first 100 to
        # offline storage too, its default limit).
        await emulator.run(emulator_options(server, to=[account[0]], count=4000, batch=1, rate=0, event_log=log))
        archived = len(stored(db)[0])
        live = asyncio.ensure_future(
            emulator.run(emulator_options(server, to=[account[0]], count=1500, batch=1, rate=150, event_log=log))
        )
        agent.start()
        # Kill while the catch-up is under way: some archived events are in, most are not.
        await wait_until(lambda: len(stored(db)[0]) - archived >= 300, timeout=60, what="catch-up under way")
        agent.kill()
        in_at_kill = len(stored(db)[0]) - archived
        await asyncio.sleep(2)  # the session's hibernation (1 s) expires: the next start is a new session
        agent.start()
        await live
        await assert_exactly_once(db, log, timeout=240, recovery_started=time.monotonic())
        assert in_at_kill < 5000, "the kill came too late to be during the catch-up"
        assert agent.stop() == 0
