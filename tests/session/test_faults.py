"""Fault tests: a real agent process, a real server (Prosody, then ejabberd), the emulator; 0 lost, 0 duplicated.

Each test compares what the emulator sent (its event log: every valid event id) with the rows in
the database, and checks ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from agent.lab import emulator
from agent.lab.servers import XmppServer

from ..agentproc import AgentProcess
from ..conftest import (
    agent_env,
    agent_state,
    archived,
    db_value,
    emulator_options,
    new_account,
    own_server,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)

HISTORY_AND_API = ("activity", "event", "job", "error", "crash", "api")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Awaitable[AgentProcess]]]:
    """Start ``xmppmon run`` against a server and wait until it is connected; killed at the end."""
    made: list[AgentProcess] = []

    async def start(server: XmppServer, db: Path, account: tuple[str, str], **extra: str) -> AgentProcess:
        agent = AgentProcess(agent_env(server, db, account, **extra), tmp_path / "agent.log")
        made.append(agent)
        agent.start()
        await wait_until(lambda: connected(db), what="connected")
        return agent

    yield start
    for agent in made:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(10)


def expected_ids(log: Path) -> set[str]:
    ids = set()
    for line in log.read_text().splitlines():
        event_id, kind, _ = line.split("\t")
        if kind in HISTORY_AND_API:
            ids.add(event_id)
    return ids


def stored(db: Path) -> tuple[set[str], int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT event_id FROM events UNION ALL SELECT event_id FROM api_calls").fetchall()
    finally:
        conn.close()
    return {r[0] for r in rows}, len(rows)


async def assert_exactly_once(db: Path, log: Path, timeout: float = 60, recovery_started: float | None = None) -> int:
    """Wait until every sent history/api event is stored, then check no loss, no duplicate, no corruption.

    With ``XMPPMON_FAULT_REPORT=FILE`` set, appends the scenario's figures to FILE (JSON lines);
    ``bench/faults_report.py`` turns them into the table of docs/reliability.md.
    """
    want = expected_ids(log)
    started = recovery_started or time.monotonic()
    await wait_until(lambda: want <= stored(db)[0], timeout=timeout, what=f"all {len(want)} events stored")
    recovered_in = time.monotonic() - started
    await asyncio.sleep(0.5)  # anything late would be a duplicate: give it the chance to show
    ids, rows = stored(db)
    report = os.environ.get("XMPPMON_FAULT_REPORT")
    if report:
        with open(report, "a") as out:
            out.write(json.dumps({
                "scenario": os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0],
                "sent": len(want), "stored": len(ids), "lost": len(want - ids),
                "duplicated": rows - len(ids), "recovered_in_s": round(recovered_in, 2),
                "integrity": db_value(db, "PRAGMA integrity_check"),
            }) + "\n")  # fmt: skip
    assert ids == want, f"{len(want - ids)} lost, {len(ids - want)} unexpected"
    assert rows == len(ids), f"{rows - len(ids)} duplicated rows"
    assert db_value(db, "PRAGMA integrity_check") == "ok"
    return len(ids)


def connected(db: Path) -> bool:
    return (agent_state(db, "session") or "").startswith("connected")


async def test_sigkill_during_stream_then_restart_within_hibernation(
    xmpp_server_kind: str, tmp_path: Path, spawn: Callable[..., Awaitable[AgentProcess]]
) -> None:
    """SIGKILL the agent three times mid-stream; the last time it stays down while the rest is sent, so the
    resumption replays thousands of stanzas: it resumes each time, nothing lost or doubled.

    The long replay is the ejabberd livelock of issue 10: the server replays its whole queue before
    its next ``<r/>``, the answer to a ping waits behind it, and a keepalive that took the late
    answer for a silent server aborted every resumed connection before the position advanced.
    The queue (5,000) holds the whole replay on both servers; pings are frequent and their timeout
    short (0.2 s, 0.3 s), so the replay always takes longer than the keepalive's patience.
    """
    with own_server(xmpp_server_kind, tmp_path / "server", max_queue_size=5000) as server:
        db, log = tmp_path / "m.db", tmp_path / "sent.log"
        account = new_account(server)
        agent = await spawn(server, db, account, XMPPMON_KEEPALIVE__INTERVAL="0.2", XMPPMON_KEEPALIVE__TIMEOUT="0.3")
        options = emulator_options(
            server, to=[account[0]], count=40_000, batch=10, rate=2500, event_log=log, duplicates=0.01
        )
        stream = asyncio.ensure_future(emulator.run(options))
        for pause in (1.5, 2.0):
            await asyncio.sleep(pause)
            agent.kill()
            agent.start()
        await asyncio.sleep(2.5)
        agent.kill()
        report = await stream  # 2,500 stanzas or more wait in the server's queue of the killed stream
        agent.start()
        restarted = time.monotonic()
        count = await assert_exactly_once(db, log, timeout=120, recovery_started=restarted)
        assert count > 20_000 and report.events_sent == 40_000
        last_run = agent.text().rsplit(" starting: ", 1)[1]
        assert "resumed at h=" in last_run, "the last restart must resume the stream"
        # The server's replay after each resumption is counted as such (docs/reliability.md), on either server.
        assert int(db_value(db, "SELECT value FROM counters WHERE name = 'events_via_resume'") or 0) > 0
        assert agent.stop() == 0


async def test_sigkill_then_restart_after_hibernation_expired(
    xmpp_server_kind: str, tmp_path: Path, spawn: Callable[..., Awaitable[AgentProcess]]
) -> None:
    """Down longer than the server keeps the session: offline storage and the archive bring everything back."""
    with own_server(xmpp_server_kind, tmp_path / "server", hibernation_time=2) as server:
        db, log = tmp_path / "m.db", tmp_path / "sent.log"
        account = new_account(server)
        agent = await spawn(server, db, account)
        stream = asyncio.ensure_future(
            emulator.run(emulator_options(server, to=[account[0]], count=6000, batch=10, rate=2000, event_log=log))
        )
        await asyncio.sleep(1.0)
        agent.kill()
        await stream  # everything else is sent while the agent is down
        await asyncio.sleep(4)  # hibernation (2 s) expires
        agent.start()
        await assert_exactly_once(db, log, recovery_started=time.monotonic())
        text = agent.text()
        assert "new session" in text and "recovered" in text
        assert agent.stop() == 0


async def test_queue_overflow_while_down(
    xmpp_server_kind: str, tmp_path: Path, spawn: Callable[..., Awaitable[AgentProcess]]
) -> None:
    """More unacknowledged stanzas than the server's queue while the agent is down: resumption is refused, nothing is lost."""
    with own_server(xmpp_server_kind, tmp_path / "server", max_queue_size=50) as server:
        db, log = tmp_path / "m.db", tmp_path / "sent.log"
        account = new_account(server)
        agent = await spawn(server, db, account)
        await emulator.run(emulator_options(server, to=[account[0]], count=200, batch=5, event_log=log))
        await wait_until(lambda: len(stored(db)[0]) >= 100, what="first events")
        agent.kill()
        await emulator.run(emulator_options(server, to=[account[0]], count=3000, batch=5, event_log=log))
        agent.start()
        await assert_exactly_once(db, log, recovery_started=time.monotonic())
        assert "new session" in agent.text()
        assert agent.stop() == 0


async def test_server_frozen_then_killed_and_restarted(
    private_xmpp_server: XmppServer, tmp_path: Path, spawn: Callable[..., Awaitable[AgentProcess]]
) -> None:
    """A server frozen past interval+timeout, then killed and restarted with the agent behind: nothing lost."""
    server, db, log = private_xmpp_server, tmp_path / "m.db", tmp_path / "sent.log"
    account = new_account(server)
    agent = await spawn(server, db, account)
    first = await emulator.run(
        emulator_options(server, to=[account[0]], count=2000, batch=10, rate=2000, event_log=log)
    )
    server.freeze()
    await asyncio.sleep(4)  # interval 1 s + timeout 2 s
    server.thaw()
    await wait_until(lambda: "ping timeout" in agent.text(), what="ping timeout noticed")
    # The agent is stopped (SIGSTOP) so that events wait in the server when it is killed.
    assert agent.proc is not None
    agent.proc.send_signal(19)
    second = await emulator.run(emulator_options(server, to=[account[0]], count=2000, batch=10, event_log=log))
    # The scenario is "the server dies with events it has archived": ejabberd archives behind its
    # routing (SQL writes), so wait until it has, rather than for a fixed time.
    sent = first.stanzas_sent + second.stanzas_sent
    deadline = time.monotonic() + 30
    while (count := await archived(server, account)) < sent:
        assert time.monotonic() < deadline, f"the server archived {count} of {sent} stanzas in 30 s"
        await asyncio.sleep(0.2)
    server.kill()
    server.start()
    agent.proc.send_signal(18)
    await assert_exactly_once(db, log, recovery_started=time.monotonic())
    assert agent.stop() == 0


async def test_tcp_connection_cut_during_burst(
    private_xmpp_server: XmppServer, tmp_path: Path, spawn: Callable[..., Awaitable[AgentProcess]]
) -> None:
    """`ss -K` kills the agent's TCP connection twice during a burst; it reconnects, resumes, loses nothing."""
    if shutil.which("ss") is None:
        pytest.fail("ss (iproute2) is missing: the README's test command installs it")
    server, db, log = private_xmpp_server, tmp_path / "m.db", tmp_path / "sent.log"
    account = new_account(server)
    agent = await spawn(server, db, account)
    stream = asyncio.ensure_future(
        emulator.run(emulator_options(server, to=[account[0]], count=10_000, batch=10, rate=2500, event_log=log))
    )
    for _ in range(2):
        await asyncio.sleep(1.2)
        subprocess.run(
            ["ss", "-K", "dst", "127.0.0.1", "dport", "=", f":{server.c2s_port}"],
            check=True, capture_output=True, timeout=10,
        )  # fmt: skip
        cut = time.monotonic()
    await stream
    await assert_exactly_once(db, log, recovery_started=cut)
    assert int(agent_state(db, "reconnects") or 0) >= 1
    assert agent.stop() == 0


async def test_database_locked_by_another_writer(
    xmpp_server: XmppServer, tmp_path: Path, spawn: Callable[..., Awaitable[AgentProcess]]
) -> None:
    """A reader in a long transaction and a second writer holding the lock: the agent waits, then stores everything."""
    db, log = tmp_path / "m.db", tmp_path / "sent.log"
    account = new_account(xmpp_server)
    agent = await spawn(xmpp_server, db, account, XMPPMON_STORE__BUSY_TIMEOUT_MS="200")
    reader = sqlite3.connect(db, isolation_level=None)
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()
        writer.execute("BEGIN IMMEDIATE")
        stream = asyncio.ensure_future(
            emulator.run(emulator_options(xmpp_server, to=[account[0]], count=3000, batch=10, rate=2000, event_log=log))
        )
        await wait_until(lambda: "locked" in agent.text(), what="lock noticed")
        await asyncio.sleep(2)
        writer.execute("ROLLBACK")
        released = time.monotonic()
        await stream
        await assert_exactly_once(db, log, recovery_started=released)
    finally:
        with contextlib.suppress(sqlite3.Error):
            reader.execute("COMMIT")
        reader.close()
        writer.close()
    assert agent.stop() == 0


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """A size-limited tmpfs at ``path`` (needs root, as CI and the README's commands run)."""
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test (needs root): {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; return it (delete it to give the space back)."""
    filler = directory / "filler"
    # Unbuffered: a write that does not fit fails in the loop; a buffered file would keep the rest
    # and raise ENOSPC again from close(), outside the suppress.
    with filler.open("wb", buffering=0) as out:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
    return filler


async def test_disk_full_stops_acknowledging_and_catches_up(
    xmpp_server: XmppServer, tmp_path: Path, spawn: Callable[..., Awaitable[AgentProcess]]
) -> None:
    """With the disk full the agent keeps running, says why, stops acknowledging, and stores everything once space returns."""
    with small_tmpfs(tmp_path / "disk") as disk:
        db, log = disk / "m.db", tmp_path / "sent.log"
        account = new_account(xmpp_server)
        agent = await spawn(xmpp_server, db, account)
        pid = agent.proc.pid if agent.proc else None
        filler = fill(disk)
        stream = asyncio.ensure_future(
            emulator.run(emulator_options(xmpp_server, to=[account[0]], count=4000, batch=10, rate=2000, event_log=log))
        )
        await wait_until(lambda: "disk is full" in agent.text(), what="disk full reported")
        await stream
        await asyncio.sleep(1)
        assert agent.proc is not None and agent.proc.poll() is None and agent.proc.pid == pid
        assert len(stored(db)[0]) < len(expected_ids(log))
        filler.unlink()
        await assert_exactly_once(db, log, recovery_started=time.monotonic())
        assert "database writes recovered" in agent.text()
        assert agent.stop() == 0
        alert = db_value(db, "SELECT state || ' ' || count FROM alerts WHERE code = 'store_failing'")
        assert alert is not None and alert.startswith("resolved"), alert
