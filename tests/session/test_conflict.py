"""Two agents with one account and resource: the replaced one names the conflict, alerts, and backs off."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.app import run_agent
from agent.lab.prosody import ProsodyServer

from ..conftest import agent_state, captured_logs, db_value, make_settings, new_account, running, wait_until  # noqa: F401

pytestmark = [pytest.mark.prosody, pytest.mark.timeout(120)]


async def test_a_resource_conflict_is_named_alerted_and_backed_off(
    prosody: ProsodyServer,
    tmp_path: Path,
    captured_logs: list[str],  # noqa: F811 - the fixture imported above
) -> None:
    """The second login with the same resource replaces the first: the first says why, raises session_conflict,
    and waits at least 30 s before trying again instead of replacing the other one at once."""
    account = new_account(prosody)
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    async with running(run_agent(make_settings(prosody, first, account), stop_a)):
        await wait_until(lambda: (agent_state(first, "session") or "").startswith("connected"), what="first up")
        async with running(run_agent(make_settings(prosody, second, account), stop_b)):
            await wait_until(lambda: any("another client logged in" in line for line in captured_logs),
                             what="conflict named")  # fmt: skip
            await wait_until(
                lambda: db_value(first, "SELECT state FROM alerts WHERE code = 'session_conflict'") == "firing",
                what="session_conflict firing",
            )
            await wait_until(
                lambda: (agent_state(first, "session") or "").startswith("retrying in"), what="backing off"
            )
            waiting = agent_state(first, "session") or ""
            assert int(waiting.split()[2]) >= 30, waiting
            stop_b.set()
        stop_a.set()
