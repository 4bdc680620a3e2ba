"""sd_notify from a real ``xmppmon run`` process: READY, STATUS, WATCHDOG, STOPPING, clean exit."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.lab import emulator
from agent.lab.prosody import ProsodyServer
from agent.systemd import Notifier, WriterHealth, watchdog_interval

from ..conftest import agent_env as base_agent_env
from ..conftest import db_value, emulator_options, new_account, running, wait_until

XMPPMON = [sys.executable, "-m", "agent"]


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self) -> None:
        # sun_path is limited to 108 bytes: pytest's tmp_path can be longer.
        self.dir = tempfile.mkdtemp(prefix="xn-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[tuple[float, dict[str, str]]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str, since: float = 0.0) -> list[dict[str, str]]:
        return [m for t, m in self.drain() if key in m and t >= since]

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    try:
        yield sock
    finally:
        sock.close()


def agent_env(
    server: ProsodyServer, db: Path, account: tuple[str, str], notify: NotifySocket, **extra: Any
) -> dict[str, str]:
    """The environment systemd would give ``xmppmon run``: settings, NOTIFY_SOCKET, WATCHDOG_USEC."""
    env = base_agent_env(server, db, account, XMPPMON_STORE__FLUSH_MS="5", XMPPMON_STORE__HEARTBEAT_SECONDS="0.5",
                         XMPPMON_KEEPALIVE__INTERVAL="30", XMPPMON_KEEPALIVE__TIMEOUT="5")  # fmt: skip
    env = {k: v for k, v in env.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    env.update({"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    env.update({f"XMPPMON_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def start_agent(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([*XMPPMON, "run"], env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_agent(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, then the exit code; kill (and fail) if it does not exit within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the agent did not exit within {timeout} s of SIGTERM") from None


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Agent processes of this test, killed (by their own PID) if the test left them running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.prosody
async def test_ready_watchdog_stopping_and_flush(
    prosody: ProsodyServer, tmp_path: Path, notify: NotifySocket, processes: list[subprocess.Popen[bytes]]
) -> None:
    """READY once connected, WATCHDOG every half second, STOPPING on SIGTERM, exit 0 with all received events on disk."""
    db, log, sent = tmp_path / "m.db", tmp_path / "agent.log", tmp_path / "sent.log"
    account = new_account(prosody)
    # Long group commits and DEBUG (slixmpp logs each stanza it receives): the test sees what
    # arrived, and SIGTERM finds some of it still uncommitted.
    env = agent_env(prosody, db, account, notify, store__flush_ms=2000, store__batch_size=100000,
                    log__level="DEBUG")  # fmt: skip
    proc = start_agent(env, log)
    processes.append(proc)
    ready = await wait_until(lambda: notify.with_key("READY"), 20, "READY=1")
    assert ready[0]["READY"] == "1" and ready[0]["STATUS"] == "connected"
    assert ready[0]["MAINPID"] == str(proc.pid)
    assert db_value(db, "SELECT count(*) FROM schema_migrations"), "READY before the database was ready"
    since = time.monotonic()
    pings = await wait_until(
        lambda: len(notify.with_key("WATCHDOG", since)) >= 3 and notify.with_key("WATCHDOG", since), 5, "pings"
    )
    assert all(p["WATCHDOG"] == "1" for p in pings)

    options = emulator_options(prosody, to=[account[0]], count=400, batch=10, rate=0, event_log=sent, seed=3)
    await emulator.run(options)
    ids = [line.split("\t")[0] for line in sent.read_text().splitlines()]
    await wait_until(lambda: ids[-1] in log.read_text(errors="replace"), 15, "the last event to reach the agent")
    stopped_at = time.monotonic()
    code = await asyncio.to_thread(stop_agent, proc)
    assert code == 0, log.read_text()[-3000:]
    assert time.monotonic() - stopped_at < 10
    stopping = notify.with_key("STOPPING")
    assert stopping and stopping[0]["STOPPING"] == "1"
    assert (
        db_value(db, "SELECT count(DISTINCT event_id) FROM events")
        + db_value(db, "SELECT count(DISTINCT event_id) FROM api_calls")
        + sum(db_value(db, f"SELECT count(*) FROM {t}") for t in ("devices", "tags", "tokens", "push_feedback"))
        >= 1
    )
    conn = sqlite3.connect(db)
    try:
        stored = {
            row[0]
            for table in ("events", "api_calls", "devices", "tags", "tokens", "push_feedback")
            for row in conn.execute(f"SELECT event_id FROM {table}")
        }
    finally:
        conn.close()
    missing = set(ids) - stored
    # State kinds keep only the newest event per key; every other event must be on disk.
    kinds = dict(line.split("\t")[:2] for line in sent.read_text().splitlines())
    missing = {i for i in missing if kinds[i] not in ("device", "tag", "token", "push")}
    assert not missing, f"{len(missing)} received events were not flushed before exit"


async def test_unreachable_server_still_ready_with_retrying_status(
    tmp_path: Path, notify: NotifySocket, processes: list[subprocess.Popen[bytes]]
) -> None:
    """With nothing listening on the server's port, READY=1 still arrives, saying it is retrying."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XMPPMON_", "NOTIFY_", "WATCHDOG_"))}
    env.update({
        "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000",
        "XMPPMON_XMPP__JID": "agent@localhost", "XMPPMON_XMPP__PASSWORD": "unused-password",
        "XMPPMON_XMPP__HOST": "127.0.0.1", "XMPPMON_XMPP__PORT": str(port),
        "XMPPMON_RECONNECT__INITIAL": "0.2", "XMPPMON_RECONNECT__MAXIMUM": "1",
        "XMPPMON_STORE__PATH": str(tmp_path / "m.db"),
    })  # fmt: skip
    proc = start_agent(env, tmp_path / "agent.log")
    processes.append(proc)
    ready = await wait_until(lambda: notify.with_key("READY"), 20, "READY=1")
    assert "retrying" in ready[0]["STATUS"] and "unreachable" in ready[0]["STATUS"]
    since = time.monotonic()
    await wait_until(lambda: len(notify.with_key("WATCHDOG", since)) >= 2, 5, "pings while retrying")
    assert await asyncio.to_thread(stop_agent, proc) == 0
    assert notify.with_key("STOPPING")


@pytest.mark.prosody
async def test_wedged_writer_stops_the_watchdog(
    prosody: ProsodyServer, tmp_path: Path, notify: NotifySocket, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A write blocked longer than stall_seconds stops the pings and STATUS says why; they resume after."""
    db = tmp_path / "m.db"
    account = new_account(prosody)
    # busy_timeout far above stall_seconds: the write stays blocked inside SQLite, as a hung disk would.
    env = agent_env(prosody, db, account, notify, store__busy_timeout_ms=60_000, store__stall_seconds=1)
    proc = start_agent(env, tmp_path / "agent.log")
    processes.append(proc)
    await wait_until(lambda: notify.with_key("READY"), 20, "READY=1")
    since = time.monotonic()
    await wait_until(lambda: len(notify.with_key("WATCHDOG", since)) >= 2, 5, "pings")

    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    stop = asyncio.Event()
    options = emulator_options(prosody, to=[account[0]], rate=200, batch=5, duration=30)
    try:
        async with running(emulator.run(options, stop)):
            wedged = await wait_until(
                lambda: [m for m in notify.with_key("STATUS") if "WEDGED" in m["STATUS"]], 10, "WEDGED status"
            )
            assert "write has been blocked" in wedged[0]["STATUS"]
            quiet_from = time.monotonic() + 0.2  # one ping may have been in flight
            await asyncio.sleep(3)  # the claim under test is an absence over time
            assert notify.with_key("WATCHDOG", quiet_from) == [], "pinged while the writer was wedged"
            blocker.execute("ROLLBACK")
            resumed = time.monotonic()
            await wait_until(lambda: len(notify.with_key("WATCHDOG", resumed)) >= 2, 10, "pings after recovery")
            stop.set()
    finally:
        blocker.close()
    assert await asyncio.to_thread(stop_agent, proc) == 0


def test_notifier_speaks_the_protocol_to_abstract_and_path_sockets(notify: NotifySocket) -> None:
    """One datagram per call with newline-separated KEY=value lines, to a path or an '@' abstract name."""
    sender = Notifier(notify.path)
    assert sender.ready("connected") and sender.watchdog() and sender.stopping()
    kinds = [next(iter(m)) for _, m in notify.drain()]
    assert kinds == ["READY", "WATCHDOG", "STOPPING"]
    sender.close()

    name = f"xmppmon-test-{os.getpid()}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(b"\0" + name.encode())
    to_abstract = Notifier("@" + name)
    try:
        assert to_abstract.status("hello")
        assert abstract.recv(100) == b"STATUS=hello"
    finally:
        to_abstract.close()
        abstract.close()
    assert not Notifier("").enabled and Notifier("").notify("READY=1") is False


def test_watchdog_interval_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half of WATCHDOG_USEC, and none when WATCHDOG_PID names another process."""
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 0.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


def test_writer_health_is_about_being_stuck_not_failing() -> None:
    """A write blocked past stall_after, or records waiting with no attempt, is wedged; a writer that
    fails and retries (disk full) is not: restarting could not free the disk."""

    class FakeStore:
        healthy, last_error, pending, write_started, last_attempt = True, None, 0, None, 1.0

    store, health = FakeStore(), WriterHealth(stall_after=5)
    assert health.check(store, 10.0)  # type: ignore[arg-type]
    store.write_started = 11.0
    assert health.check(store, 15.0)  # type: ignore[arg-type]
    assert not health.check(store, 16.5) and "blocked" in health.reason  # type: ignore[arg-type]
    store.write_started, store.last_attempt, store.pending = None, 16.6, 3
    assert health.check(store, 16.7)  # type: ignore[arg-type]
    store.healthy, store.last_error = False, "database or disk is full"
    assert health.check(store, 20.0) and health.failing == "database or disk is full"  # type: ignore[arg-type]
    assert not health.check(store, 22.0) and "no database write attempted" in health.reason  # type: ignore[arg-type]


async def test_sidecar_speaks_sd_notify(tmp_path: Path, notify: NotifySocket) -> None:
    """The sidecar sends READY once its outbox is open, WATCHDOG while its loop runs, STOPPING on SIGTERM, and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XMPPMON_", "NOTIFY_", "WATCHDOG_"))}
    env |= {
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": "1000000",
        "XMPPMON_STORE__PATH": str(tmp_path / "m.db"),
        "XMPPMON_SIDECAR__POLL_SECONDS": "0.2",
        "XMPPMON_SIDECAR__SINKS": '[{"type": "webhook", "url": "http://127.0.0.1:9/unused"}]',
    }
    with (tmp_path / "sidecar.log").open("wb") as log:
        proc = subprocess.Popen([*XMPPMON, "sidecar"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = await wait_until(lambda: notify.with_key("READY"), 20, "READY=1")
        assert "relaying to webhook" in ready[0].get("STATUS", "")
        since = time.monotonic()
        await wait_until(lambda: len(notify.with_key("WATCHDOG", since)) >= 2, 10, "watchdog pings")
    finally:
        code = await asyncio.to_thread(stop_agent, proc)
    assert code == 0
    assert notify.with_key("STOPPING")
