"""Low disk and full disk, on a real tmpfs: the agent and the sidecar as processes, a real webhook.

``disk_low`` must reach the webhook before the agent's first commit fails; once the disk is
completely full the sidecar still sends, holds what it cannot record, and records it when it can.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from agent.lab import emulator
from agent.lab.prosody import ProsodyServer

from ..agentproc import Proc, fill, free_bytes, tmpfs
from ..conftest import agent_env, agent_state, db_rows_of, db_value, emulator_options, new_account, wait_until

pytestmark = [pytest.mark.prosody, pytest.mark.timeout(300)]
HISTORY = ("activity", "event", "job", "error", "crash")
FAST = {"attempts": 1, "backoff_initial": 0.05, "backoff_max": 0.1, "backoff_jitter": 0.01, "park_seconds": 0.3}


class Webhook:
    """A webhook on a real local HTTP server: 503 until ``accept`` is set, then 200; every request logged."""

    def __init__(self, http: HTTPServer, accept: bool = True) -> None:
        self.accept = accept
        self.log: list[tuple[float, int, list[dict[str, Any]]]] = []
        http.expect_request("/hook").respond_with_handler(self)
        self.url = http.url_for("/hook")

    def __call__(self, request: Request) -> Response:
        status = 200 if self.accept else 503
        self.log.append((time.time(), status, json.loads(request.data)["messages"]))
        return Response("", status=status)

    def times(self, code: str, transition: str, status: int = 200) -> list[float]:
        return [at for at, got, messages in self.log for m in messages
                if got == status and m["alert"]["code"] == code and m["transition"] == transition]  # fmt: skip

    def keys(self, code: str, status: int = 200) -> list[str]:
        return [m["id"] for _, got, messages in self.log for m in messages
                if got == status and m["alert"]["code"] == code]  # fmt: skip


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[tuple[Path, list[Proc]]]:
    """A tmpfs for the database and the processes using it, stopped before it is unmounted."""
    with tmpfs(tmp_path / "fs", 32) as fs:
        made: list[Proc] = []
        try:
            yield fs, made
        finally:
            for proc in made:
                if proc.alive():
                    assert proc.proc is not None
                    proc.proc.kill()
                    proc.proc.wait(10)


def sidecar_env(webhook: Webhook) -> dict[str, str]:
    sink = {"type": "webhook", "url": webhook.url, **FAST}
    return {"XMPPMON_SIDECAR__SINKS": json.dumps([sink]), "XMPPMON_SIDECAR__POLL_SECONDS": "0.2",
            "XMPPMON_SIDECAR__AGENT_DOWN_AFTER": "3600"}  # fmt: skip


async def start(procs: list[Proc], args: list[str], env: dict[str, str], log: Path) -> Proc:
    proc = Proc(args, env, log).start()
    procs.append(proc)
    return proc


async def test_disk_low_reaches_the_webhook_before_the_first_failed_commit(
    prosody: ProsodyServer, tmp_path: Path, disk: tuple[Path, list[Proc]]
) -> None:
    """A stream fills a small tmpfs: disk_low is at the webhook before the first commit fails; resolved after."""
    fs, procs = disk
    db, account = fs / "m.db", new_account(prosody)
    with HTTPServer(host="127.0.0.1") as http:
        hook = Webhook(http)
        env = agent_env(prosody, db, account, XMPPMON_STORE__MIN_FREE_MB="8", XMPPMON_LOG__JSON="true")
        agent = await start(procs, ["run"], env, tmp_path / "agent.log")
        await wait_until(lambda: (agent_state(db, "session") or "").startswith("connected"), 30, "connected")
        sidecar = await start(procs, ["sidecar"], env | sidecar_env(hook), tmp_path / "sidecar.log")
        await wait_until(lambda: db_value(db, "SELECT count(*) FROM sink_cursor") == 1, 30, "the sidecar")
        fill(fs / "filler", leave=14 << 20)
        assert not hook.times("disk_low", "firing")
        stop = asyncio.Event()
        options = emulator_options(prosody, to=[account[0]], rate=3000, batch=50, duration=150, kinds=HISTORY)
        stream = asyncio.ensure_future(emulator.run(options, stop))
        try:
            await wait_until(lambda: "cannot commit to" in agent.text(), 200, "the first failed commit")
        finally:
            stop.set()
            await stream
        records = agent.records()
        failed_at = min(r["at"] for r in records if "cannot commit to" in r["message"])
        low_at = min(r["at"] for r in records if r["message"].startswith("disk low"))
        delivered = hook.times("disk_low", "firing")
        assert delivered, f"disk_low never reached the webhook: {hook.log}"
        assert low_at < delivered[0] < failed_at, (low_at, delivered, failed_at)
        assert "database or disk is full" in agent.text()
        assert free_bytes(fs) < 1 << 20

        (fs / "filler").unlink()  # space comes back
        await wait_until(lambda: "database writes recovered" in agent.text(), 90, "the writer recovered")
        await wait_until(lambda: hook.times("disk_low", "resolved"), 60, "disk_low resolved at the webhook")
        assert agent.stop() == 0 and sidecar.stop() == 0
    assert db_value(db, "PRAGMA integrity_check") == "ok"
    alerts = dict(db_rows_of(db, "SELECT code, state FROM alerts WHERE source = 'store'"))
    assert alerts == {"disk_low": "resolved", "store_failing": "resolved"}
    stored = db_value(db, "SELECT count(*) FROM events")
    counters = dict(db_rows_of(db, "SELECT name, value FROM counters"))
    assert stored > 10_000 and counters["events_received"] >= stored and "events_expired" not in counters
    assert db_value(db, "SELECT count(*) FROM quarantine") == 0 and db_value(db, "SELECT count(*) FROM api_calls") == 0
    states = db_rows_of(db, "SELECT d.state FROM delivery_state d JOIN notifications n ON n.id = d.notification_id"
                      " JOIN alerts a ON a.id = n.alert_id WHERE a.code = 'disk_low'")  # fmt: skip
    assert states and {s for (s,) in states} == {"delivered"}


async def test_full_disk_sidecar_sends_and_records_once_it_can(
    prosody: ProsodyServer, tmp_path: Path, disk: tuple[Path, list[Proc]]
) -> None:
    """With the disk completely full the sidecar sends disk_low, holds the record (never sending it twice),
    and writes it once space returns."""
    fs, procs = disk
    db, account = fs / "m.db", new_account(prosody)
    with HTTPServer(host="127.0.0.1") as http:
        hook = Webhook(http, accept=False)
        env = agent_env(prosody, db, account, XMPPMON_STORE__MIN_FREE_MB="4", XMPPMON_LOG__JSON="true")
        agent = await start(procs, ["run"], env, tmp_path / "agent.log")
        await wait_until(lambda: (agent_state(db, "session") or "").startswith("connected"), 30, "connected")
        sidecar = await start(procs, ["sidecar"], env | sidecar_env(hook), tmp_path / "sidecar.log")
        await wait_until(lambda: db_value(db, "SELECT count(*) FROM sink_cursor") == 1, 30, "the sidecar")
        fill(fs / "filler", leave=2 << 20)
        await wait_until(lambda: hook.times("disk_low", "firing", status=503), 30, "a refused first try")
        key = hook.keys("disk_low", status=503)[0]
        await wait_until(
            lambda: db_rows_of(
                db,
                "SELECT 1 FROM deliveries d JOIN notifications n ON n.id ="
                " d.notification_id WHERE n.key = ? AND d.status = 'retry'",
                key,
            ),
            30,
        )
        assert agent.stop() == 0  # from here on only the sidecar writes
        # An empty WAL, then not one free byte: the sidecar's next record needs room it cannot get.
        conn = sqlite3.connect(db, timeout=10)
        try:
            assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        finally:
            conn.close()
        fill(fs / "filler2")
        assert free_bytes(fs) == 0
        hook.accept = True
        await wait_until(lambda: key in hook.keys("disk_low"), 30, "sent with the disk full")
        await wait_until(lambda: "holding the deliveries sent in memory" in sidecar.text(), 30, "held")
        await asyncio.sleep(2)  # ten polls: it is neither sent again nor recorded
        assert hook.keys("disk_low").count(key) == 1
        recorded = "SELECT d.status FROM deliveries d JOIN notifications n ON n.id = d.notification_id WHERE n.key = ?"
        assert "delivered" not in {s for (s,) in db_rows_of(db, recorded, key)}
        assert sidecar.alive()

        (fs / "filler2").unlink()
        (fs / "filler").unlink()
        await wait_until(lambda: "delivered" in {s for (s,) in db_rows_of(db, recorded, key)}, 30, "recorded")
        assert "recorded" in sidecar.text() and "held delivery attempt(s)" in sidecar.text()
        assert hook.keys("disk_low").count(key) == 1
        statuses = [s for (s,) in db_rows_of(db, recorded + " ORDER BY d.id", key)]
        assert statuses[-1] == "delivered" and set(statuses[:-1]) == {"retry"}
        state = db_rows_of(db, "SELECT d.state FROM delivery_state d JOIN notifications n ON n.id = d.notification_id"
                         " WHERE n.key = ?", key)  # fmt: skip
        assert state == [("delivered",)]
        agent = await start(procs, ["run"], env, tmp_path / "agent2.log")  # the agent comes back
        await wait_until(lambda: (agent_state(db, "session") or "").startswith("connected"), 30, "reconnected")
        assert agent.stop() == 0 and sidecar.stop() == 0
    assert db_value(db, "PRAGMA integrity_check") == "ok"
