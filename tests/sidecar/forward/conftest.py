"""Forwarding tests' tools: private NATS nodes, agent and sidecar processes, and the stream read back and checked."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from agent.lab.nats import NatsCluster
from agent.lab.prosody import ProsodyServer

from ...agentproc import Proc
from ...conftest import agent_env, db_value, wait_until

ACCOUNT = "acct"
STREAM = "XMPPMON"
APPENDED = {"events": "kind", "api_calls": "'api'", "state_changes": "kind"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three JetStream nodes routed to each other on loopback, stopped at the end."""
    nodes = NatsCluster(tmp_path / "nats", size=3)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[[str, dict[str, str]], Proc]]:
    """Start processes (killed at the end if still running)."""
    made: list[Proc] = []

    def start(command: str, env: dict[str, str]) -> Proc:
        proc = Proc([command], env, tmp_path / f"{command}.log")
        made.append(proc)
        proc.start()
        return proc

    yield start
    for proc in made:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)


def forward_env(
    server: ProsodyServer, db: Path, account: tuple[str, str], urls: list[str], **extra: str
) -> dict[str, str]:
    """The agent's environment plus forwarding to ``urls``, no alert sink, quick timeouts."""
    return agent_env(
        server, db, account,
        XMPPMON_SIDECAR__SINKS="[]",
        XMPPMON_SIDECAR__POLL_SECONDS="0.2",
        XMPPMON_FORWARD__NATS_URLS=json.dumps(urls),
        XMPPMON_FORWARD__ACCOUNT=ACCOUNT,
        XMPPMON_FORWARD__ACK_TIMEOUT="2",
        **extra,
    )  # fmt: skip


def forward_state(db: Path, key: str) -> str | None:
    return db_value(db, "SELECT value FROM forward_state WHERE key = ?", key)


def expected_records(db: Path, alerts: bool = False) -> dict[str, tuple[str, str, int]]:
    """Every record the database holds, as msg id -> (subject, source, id): what the stream must hold once each."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = {}
        for table, kind in APPENDED.items():
            for rid, app, k in conn.execute(f"SELECT id, app, {kind} FROM {table}"):
                found[f"xmppmon:{ACCOUNT}:{table}:{rid}"] = (f"xmppmon.{ACCOUNT}.{app}.{k}", table, rid)
        if alerts:
            rows = conn.execute("SELECT n.id, a.app FROM notifications n JOIN alerts a ON a.id = n.alert_id")
            for rid, app in rows:
                found[f"xmppmon:{ACCOUNT}:notifications:{rid}"] = (
                    f"xmppmon.{ACCOUNT}.{app or '_'}.alert",
                    "notifications",
                    rid,
                )
    finally:
        conn.close()
    return found


def caught_up(db: Path, alerts: bool = False) -> bool:
    """Whether forward_cursor has reached the newest row of every forwarded table."""
    tables = [*APPENDED, "notifications"] if alerts else list(APPENDED)
    for table in tables:
        top = db_value(db, f"SELECT coalesce(max(id), 0) FROM {table}")
        cursor = db_value(db, "SELECT last_id FROM forward_cursor WHERE source = ?", table)
        if top is None or cursor is None or int(cursor) < int(top):
            return False
    return True


@dataclass
class Message:
    seq: int
    subject: str
    msg_id: str
    body: dict[str, Any]


async def read_stream(urls: list[str], stream: str = STREAM, timeout: float = 60) -> list[Message]:
    """Every message of the stream, in stream order, through an ordered consumer (nats-py)."""
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        sub = await js.subscribe(f"xmppmon.{ACCOUNT}.>", ordered_consumer=True, stream=stream)
        got: list[Message] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(got) < total:
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"read {len(got)} of {total} messages in {timeout} s"
            msg = await sub.next_msg(timeout=min(left, 10))
            assert msg.headers is not None
            got.append(
                Message(msg.metadata.sequence.stream, msg.subject, msg.headers["Nats-Msg-Id"], json.loads(msg.data))
            )
        await sub.unsubscribe()
        return got
    finally:
        await nc.close()


def assert_exactly_once(messages: list[Message], db: Path, alerts: bool = False, dead: set[str] = frozenset()) -> int:  # type: ignore[assignment]
    """The stream holds every record of the database once (but the ``dead`` msg ids), nothing else, in order per subject."""
    want = {k: v for k, v in expected_records(db, alerts).items() if k not in dead}
    ids = [m.msg_id for m in messages]
    doubled = len(ids) - len(set(ids))
    missing = set(want) - set(ids)
    extra = set(ids) - set(want)
    assert not doubled and not missing and not extra, f"{doubled} doubled, {len(missing)} lost, {len(extra)} unexpected"
    last: dict[str, int] = {}
    for m in messages:
        subject, source, rid = want[m.msg_id]
        assert m.subject == subject, (m.msg_id, m.subject, subject)
        assert (m.body["source"], m.body["seq"], m.body["id"]) == (source, rid, m.msg_id)
        assert last.get(m.subject, 0) < rid, f"{m.subject}: {rid} after {last[m.subject]}"
        last[m.subject] = rid
    return len(messages)


def assert_tables(db: Path, sent: int, dead: int = 0, lagging: bool = False) -> None:
    """The agent's and the sidecar's tables after a run: nothing quarantined, no delivery, the expected alerts."""
    assert db_value(db, "SELECT value FROM counters WHERE name = 'events_received'") == sent
    assert db_value(db, "SELECT count(*) FROM quarantine") == 0
    assert db_value(db, "SELECT count(*) FROM deliveries") == 0  # no sink configured
    assert db_value(db, "SELECT count(*) FROM delivery_state") == 0
    assert db_value(db, "SELECT count(*) FROM forward_dead") == dead
    fired = db_value(db, "SELECT count(*) FROM notifications n JOIN alerts a ON a.id = n.alert_id"
                         " WHERE a.code = 'forward_lagging' AND n.transition = 'firing'")  # fmt: skip
    assert bool(fired) == lagging, f"forward_lagging fired {fired} time(s)"
    assert db_value(db, "SELECT count(*) FROM alerts WHERE code IN ('agent_down', 'store_failing')"
                        " AND state = 'firing'") == 0  # fmt: skip
    assert db_value(db, "PRAGMA integrity_check") == "ok"


async def wait_forwarded(db: Path, timeout: float = 90, alerts: bool = False) -> None:
    await wait_until(lambda: caught_up(db, alerts), timeout=timeout, what="forward_cursor at the newest rows")
