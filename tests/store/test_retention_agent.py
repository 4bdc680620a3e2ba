"""Retention and the database commands on a real agent process, a real Prosody and real SQLite files.

Events with chosen timestamps come from the emulator's component (``agent.lab.emulator.send``),
through Prosody, to ``xmppmon run``; the tests read the database read-only, as an operator would.
"""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import StoreSettings
from agent.events import iso, parse_event
from agent.lab import emulator
from agent.lab.emulator.send import component
from agent.lab.prosody import ProsodyServer
from agent.store import Store

from ..agentproc import XMPPMON, Proc, free_bytes, tmpfs
from ..conftest import agent_env, agent_state, db_value, emulator_options, new_account, wait_until

pytestmark = [pytest.mark.prosody, pytest.mark.timeout(240)]
DAY = 86_400.0
# How long before the 1-day limit the "aging" events are stamped: room for them to be stored first
# (arriving already past the limit they would be dropped as expired), on a loaded machine too.
AGING = 20.0


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    """Processes a test starts; every one still running is killed at the end."""
    made: list[Proc] = []
    yield made
    for proc in made:
        if proc.alive():
            assert proc.proc is not None
            proc.proc.kill()
            proc.proc.wait(10)


async def start_agent(
    procs: list[Proc], server: ProsodyServer, db: Path, account: tuple[str, str], log: Path, **extra: str
) -> Proc:
    agent = Proc(["run"], agent_env(server, db, account, **extra), log).start()
    procs.append(agent)
    await wait_until(lambda: (agent_state(db, "session") or "").startswith("connected"), 30, "agent connected")
    return agent


def ids(db: Path, table: str) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute(f"SELECT event_id FROM {table}")}
    finally:
        conn.close()


def counter(db: Path, name: str) -> int:
    return int(db_value(db, "SELECT value FROM counters WHERE name = ?", name) or 0)


async def test_old_and_fresh_events_in_one_wave(prosody: ProsodyServer, tmp_path: Path, procs: list[Proc]) -> None:
    """Events 40 days old are never stored, only counted; the fresh ones of the same messages stay."""
    db, account = tmp_path / "m.db", new_account(prosody)
    agent = await start_agent(procs, prosody, db, account, tmp_path / "agent.log", XMPPMON_RETENTION__HISTORY_DAYS="30")
    now = time.time()
    async with component(emulator_options(prosody, seed=11, api_status=504)) as monitor:
        old = [monitor.event(kind, iso(now - 40 * DAY)) for kind in ("activity", "crash", "api") * 10]
        fresh = [monitor.event(kind, iso(now - 60)) for kind in ("event", "job", "api") * 10]
        device = monitor.event("device", iso(now - 40 * DAY))
        wave = [xml for pair in zip(old, fresh, strict=True) for _, xml in pair]
        for start in range(0, len(wave), 20):
            monitor.send(account[0], wave[start : start + 20])
        monitor.send(account[0], [device[1]])
        await monitor.flush()
    await wait_until(lambda: counter(db, "events_received") == 61, 30, "the wave committed")
    stored = ids(db, "events") | ids(db, "api_calls")
    assert stored == {eid for eid, _ in fresh}
    assert counter(db, "events_expired") == 30 and counter(db, "events_duplicate") == 0
    assert db_value(db, "SELECT count(*) FROM devices") == 1  # a state value is current, whatever its age
    assert db_value(db, "SELECT count(*) FROM quarantine") == 0
    # Alert rules count only what is stored: the 10 fresh 504s, not the 10 expired ones.
    assert db_value(db, "SELECT sum(count) FROM alerts WHERE source = 'api'") == 10
    assert agent.text().count("older than the history retention") == 1
    assert agent.stop() == 0


async def test_a_pass_prunes_what_aged_and_redeliveries_stay_absorbed(
    prosody: ProsodyServer, tmp_path: Path, procs: list[Proc]
) -> None:
    """Events past the limit are pruned by a pass; a redelivered fresh event is still absorbed, a pruned one dropped."""
    db, account = tmp_path / "m.db", new_account(prosody)
    agent = await start_agent(procs, prosody, db, account, tmp_path / "agent.log",
                              XMPPMON_RETENTION__HISTORY_DAYS="1", XMPPMON_RETENTION__INTERVAL="1")  # fmt: skip
    now = time.time()
    async with component(emulator_options(prosody, seed=12)) as monitor:
        aging = [monitor.event(kind, iso(now - DAY + AGING)) for kind in ("activity", "api", "error") * 20]
        fresh = [monitor.event(kind, iso(now - 60)) for kind in ("activity", "api") * 10]
        state = monitor.event("tag", iso(now - DAY + AGING))
        monitor.send(account[0], [xml for _, xml in aging + fresh] + [state[1]])
        await monitor.flush()
        await wait_until(lambda: len(ids(db, "events") | ids(db, "api_calls")) == 80, 30, "all stored")
        # AGING seconds later the aging ones are past the 1-day limit: the next pass deletes them.
        await wait_until(lambda: len(ids(db, "events") | ids(db, "api_calls")) == 20, AGING + 40, "the aged pruned")
        assert ids(db, "events") | ids(db, "api_calls") == {eid for eid, _ in fresh}
        assert db_value(db, "SELECT count(*) FROM tags") == 1  # state tables are never pruned by age
        # Redelivered: a fresh one is a duplicate still, a pruned one is expired, never stored again.
        monitor.send(account[0], [fresh[0][1], fresh[1][1], aging[0][1]])
        await monitor.flush()
        await wait_until(lambda: counter(db, "events_duplicate") == 2 and counter(db, "events_expired") == 1, 30)
    assert len(ids(db, "events") | ids(db, "api_calls")) == 20
    # The pass logs once it has also returned the free pages: after its deletes were visible.
    await wait_until(lambda: "retention pass: deleted 60 history row(s)" in agent.text(), 30, "the pass's log line")
    assert db_value(db, "PRAGMA integrity_check") == "ok"
    assert agent.stop() == 0


async def test_new_database_is_incremental_and_freelist_drops(
    prosody: ProsodyServer, tmp_path: Path, procs: list[Proc]
) -> None:
    """The agent creates its file with auto_vacuum=INCREMENTAL; after a pass the free pages go back to the disk."""
    db, account = tmp_path / "m.db", new_account(prosody)
    agent = await start_agent(procs, prosody, db, account, tmp_path / "agent.log",
                              XMPPMON_RETENTION__HISTORY_DAYS="1", XMPPMON_RETENTION__INTERVAL="1")  # fmt: skip
    assert db_value(db, "PRAGMA auto_vacuum") == 2
    now = time.time()
    async with component(emulator_options(prosody, seed=13)) as monitor:
        aging = [monitor.event("crash", iso(now - DAY + AGING)) for _ in range(3000)]
        for start in range(0, len(aging), 100):
            monitor.send(account[0], [xml for _, xml in aging[start : start + 100]])
        await monitor.flush()
    await wait_until(lambda: counter(db, "events_received") == 3000, 60, "stored")
    peak = db_value(db, "PRAGMA page_count")
    # The newest row always stays (agent.store.changes.retention_guard: rowids are never reused).
    await wait_until(lambda: "retention pass: deleted 2999 history" in agent.text(), AGING + 60, "the pass")
    assert db_value(db, "PRAGMA freelist_count") == 0
    assert db_value(db, "PRAGMA page_count") < peak / 2
    # In WAL mode the file itself shrinks when a checkpoint copies the vacuumed pages (once a second).
    await wait_until(lambda: db.stat().st_size < peak * 4096 / 2, 30, "the file truncated by a checkpoint")
    returned = int(agent.text().split("returned ")[1].split(" free page")[0])
    assert returned > peak / 2
    assert db_value(db, "PRAGMA integrity_check") == "ok"
    assert agent.stop() == 0


async def test_backup_during_a_stream_is_consistent(prosody: ProsodyServer, tmp_path: Path, procs: list[Proc]) -> None:
    """db backup taken while the agent commits a stream opens, passes integrity_check and is one private file."""
    db, account = tmp_path / "m.db", new_account(prosody)
    agent = await start_agent(procs, prosody, db, account, tmp_path / "agent.log")
    options = emulator_options(prosody, to=[account[0]], rate=2000, batch=20, duration=8, seed=14)
    stream = asyncio.ensure_future(emulator.run(options))
    try:
        await wait_until(lambda: counter(db, "events_received") > 2000, 30, "streaming")
        counts = []
        for n in range(3):
            target = tmp_path / "backups" / f"b{n}.db"
            target.parent.mkdir(exist_ok=True)
            done = await asyncio.to_thread(subprocess.run, [*XMPPMON, "db", "backup", str(target), "--database", str(db)],
                                           capture_output=True, text=True, timeout=60)  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert f"backed up {db} to {target}" in done.stdout
            conn = sqlite3.connect(target)
            try:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
                counts.append(conn.execute("SELECT count(*) FROM events").fetchone()[0])
                assert conn.execute("SELECT count(*) FROM agent_state").fetchone()[0] > 0
            finally:
                conn.close()
            assert not stat.S_IMODE(target.stat().st_mode) & 0o007
            await asyncio.sleep(0.5)
        assert counts == sorted(counts) and counts[-1] > counts[0] > 0  # taken while rows kept coming
        assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == ["b0.db", "b1.db", "b2.db"]
    finally:
        await stream
    assert agent.stop() == 0
    assert db_value(db, "PRAGMA integrity_check") == "ok"


async def _old_database(path: Path, events: int) -> None:
    """A database as xmppmon made them before auto_vacuum (none), half of its rows deleted."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("CREATE TABLE placeholder (x)")  # the file is no longer new: the agent leaves its mode alone
    conn.commit()
    conn.close()
    store = await Store.open(StoreSettings(path=path, batch_size=5000))
    ts = iso(time.time())
    for start in range(0, events, 5000):
        store.submit_events([parse_event({"id": f"e{n}", "kind": "event", "app": "demo", "ts": ts},
                                         '{"device_id":"d","pad":"%s"}' % ("x" * 300), 4096)
                             for n in range(start, start + 5000)], ts)  # fmt: skip
    await store.barrier()
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM events WHERE id <= ?", (events // 2,))
    conn.commit()
    conn.close()


def db_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*XMPPMON, "db", *args], capture_output=True, text=True, timeout=120, env=env)


async def test_vacuum_converts_an_old_database_and_refuses_without_room(tmp_path: Path) -> None:
    """db vacuum converts an old file to incremental and frees space; it refuses in one line while the
    agent writes, and when the file system lacks room, changing nothing."""
    db = tmp_path / "old.db"
    await _old_database(db, 12_000)
    assert db_value(db, "PRAGMA auto_vacuum") == 0
    rows, before = db_value(db, "SELECT count(*) FROM events"), db.stat().st_size

    # Room for the file and under one MiB more: less than its pages in use, which the WAL alone needs.
    with tmpfs(tmp_path / "small", before // (1 << 20) + 1) as small:
        cramped = small / "old.db"
        cramped.write_bytes(db.read_bytes())
        in_use = (db_value(db, "PRAGMA page_count") - db_value(db, "PRAGMA freelist_count")) * 4096
        assert free_bytes(small) < in_use
        refused = db_cli("vacuum", "--database", str(cramped))
        assert refused.returncode == 1 and refused.stdout == ""
        assert len(refused.stderr.strip().splitlines()) == 1
        assert "not enough free space to vacuum" in refused.stderr and "nothing was changed" in refused.stderr
        assert db_value(cramped, "PRAGMA auto_vacuum") == 0 and cramped.stat().st_size == before
        assert db_value(cramped, "SELECT count(*) FROM events") == rows

    store = await Store.open(StoreSettings(path=db, heartbeat_seconds=1))  # "the agent", writing its heartbeat
    try:
        await wait_until(lambda: agent_state(db, "heartbeat"), 10)
        store.set_state("pid", __import__("os").getpid())
        await store.barrier()
        busy = db_cli("vacuum", "--database", str(db))
        assert busy.returncode == 1 and "the agent is writing" in busy.stderr and "--force" in busy.stderr
    finally:
        await store.close()
    stale = int(time.time() - 3600)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE agent_state SET value = ? WHERE key = 'heartbeat'", (iso(stale),))
    conn.commit()
    conn.close()

    done = db_cli("vacuum", "--database", str(db))
    assert done.returncode == 0, done.stderr
    assert "freed" in done.stdout and " s: " in done.stdout and "auto_vacuum incremental (was none)" in done.stdout
    assert db_value(db, "PRAGMA auto_vacuum") == 2
    assert db.stat().st_size < before * 0.7
    assert db_value(db, "SELECT count(*) FROM events") == rows
    assert db_value(db, "PRAGMA integrity_check") == "ok"
    stats = db_cli("stats", "--json", "--database", str(db))
    assert stats.returncode == 0 and '"auto_vacuum": "incremental"' in stats.stdout
