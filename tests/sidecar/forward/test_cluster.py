"""Forwarding end to end: emulator -> Prosody -> agent -> SQLite -> sidecar -> a 3-node JetStream cluster (R3).

Real processes throughout (``xmppmon run``, ``xmppmon sidecar`` with no alert sink), faults injected
into the cluster and the sidecar; the stream is read back with a nats-py consumer and must hold every
committed record exactly once, each subject in record order.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

from agent.lab import emulator
from agent.lab.nats import NatsCluster
from agent.lab.prosody import ProsodyServer

from ...conftest import agent_state, db_value, emulator_options, new_account, wait_until
from .conftest import (
    STREAM,
    Proc,
    assert_exactly_once,
    assert_tables,
    caught_up,
    forward_env,
    forward_state,
    read_stream,
    wait_forwarded,
)

pytestmark = [pytest.mark.prosody, pytest.mark.nats, pytest.mark.timeout(300)]

#: How long the whole cluster stays down in the outage test: 15 s keeps the suite short; the
#: issue's 60 s is XMPPMON_TEST_NATS_OUTAGE_SECONDS=60 (same code path, a longer wait).
OUTAGE = float(os.environ.get("XMPPMON_TEST_NATS_OUTAGE_SECONDS", "15"))

Spawn = Callable[[str, dict[str, str]], Proc]
#: Events per fault test, and their rate: enough for the fault to land mid-stream.
COUNT, RATE = 16_000, 3000


def events_in(db: Path) -> int:
    return int(db_value(db, "SELECT count(*) FROM events") or 0)


def cursor_sum(db: Path) -> int:
    return int(db_value(db, "SELECT coalesce(sum(last_id), 0) FROM forward_cursor") or 0)


async def start_pair(
    server: ProsodyServer, tmp_path: Path, cluster: NatsCluster, procs: Spawn, **extra: str
) -> tuple[Path, str, Proc, Proc]:
    """An agent and a forwarding sidecar, both up: the agent connected, the forwarder forwarding."""
    db = tmp_path / "m.db"
    account = new_account(server)
    env = forward_env(server, db, account, cluster.urls, **extra)
    agent = procs("run", env)
    await wait_until(lambda: (agent_state(db, "session") or "").startswith("connected"), what="agent connected")
    sidecar = procs("sidecar", env)
    await wait_until(lambda: forward_state(db, "state") == "forwarding", timeout=30, what="forwarder ready")
    return db, account[0], agent, sidecar


def stream_events(server: ProsodyServer, jid: str, count: int, rate: float, log: Path) -> asyncio.Future[object]:
    options = emulator_options(server, to=[jid], count=count, batch=25, rate=rate, event_log=log, seed=15)
    return asyncio.ensure_future(emulator.run(options))


async def stream_leader(cluster: NatsCluster) -> int:
    """Index in ``cluster.nodes`` of the node leading the stream."""
    nc = await nats.connect(servers=cluster.urls)
    try:
        leader = (await nc.jetstream().stream_info(STREAM)).cluster
        assert leader is not None and leader.leader
        return [n.name for n in cluster.nodes].index(leader.leader)
    finally:
        await nc.close()


async def test_50k_events_reach_an_r3_stream_exactly_once_in_order(
    prosody: ProsodyServer, tmp_path: Path, cluster: NatsCluster, procs: Spawn
) -> None:
    """50,000 events through Prosody: the R3 stream holds every record (events, API calls, state changes, alerts) once, in order per subject."""
    db, jid, agent, sidecar = await start_pair(prosody, tmp_path, cluster, procs, XMPPMON_FORWARD__ALERTS="true")
    report = await stream_events(prosody, jid, 50_000, 6000, tmp_path / "sent.log")
    await wait_until(lambda: db_value(db, "SELECT value FROM counters WHERE name = 'events_received'") == 50_000,
                     timeout=90, what="50,000 events committed")  # fmt: skip
    await wait_forwarded(db, alerts=True)
    messages = await read_stream(cluster.urls)
    assert assert_exactly_once(messages, db, alerts=True) > 40_000
    assert {m.body["kind"] for m in messages} >= {"activity", "api", "device", "tag", "alert"}
    assert report.events_sent == 50_000  # type: ignore[attr-defined]
    info = await _stream_info(cluster)
    assert info.config.num_replicas == 3 and info.config.duplicate_window == 3600
    assert_tables(db, 50_000)
    assert float(forward_state(db, "lag_seconds") or 99) < 5
    assert sidecar.stop() == 0 and agent.stop() == 0
    assert "Traceback" not in sidecar.text()
    shown = subprocess.run([sys.executable, "-m", "agent", "status", "--json", "--database", str(db)],
                           capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    forward = json.loads(shown.stdout)["forward"]
    assert forward["state"] == "stopped" and forward["stream"] == STREAM and forward["dead_letters"] == 0
    assert forward["pending"] == 0 and forward["lag_seconds"] < 5 and forward["error"] is None


async def test_a_node_killed_mid_stream_then_restarted(
    prosody: ProsodyServer, tmp_path: Path, cluster: NatsCluster, procs: Spawn
) -> None:
    """kill -9 of the stream's leader mid-stream, restarted 3 s later: nothing lost, nothing doubled, order kept."""
    db, jid, agent, sidecar = await start_pair(prosody, tmp_path, cluster, procs)
    stream = stream_events(prosody, jid, COUNT, RATE, tmp_path / "sent.log")
    await wait_until(lambda: events_in(db) > COUNT // 8, what="stream under way")
    node = cluster.nodes[await stream_leader(cluster)]
    node.kill()
    await asyncio.sleep(3)
    await asyncio.to_thread(node.start)
    await stream
    await wait_forwarded(db)
    assert_exactly_once(await read_stream(cluster.urls), db)
    assert_tables(db, COUNT)
    assert sidecar.stop() == 0 and agent.stop() == 0


async def test_sidecar_killed_twice_mid_stream(
    prosody: ProsodyServer, tmp_path: Path, cluster: NatsCluster, procs: Spawn
) -> None:
    """kill -9 of the sidecar twice mid-stream, once for longer than the stream's duplicate window: no loss, no double."""
    db, jid, agent, sidecar = await start_pair(
        prosody, tmp_path, cluster, procs, XMPPMON_FORWARD__DUPLICATE_WINDOW="1", XMPPMON_FORWARD__REPLICAS="3"
    )
    stream = stream_events(prosody, jid, COUNT, RATE, tmp_path / "sent.log")
    # The second outage outlasts the 1 s duplicate window: only the chain keeps the stream exact. The
    # saved cursor usually lags the stream at a kill ("resuming from there" in the log); resending from
    # it instead of the stream's end doubled ~1,200 records in a trial run.
    for down, committed in ((0.0, COUNT // 8), (2.5, COUNT // 3)):
        before = cursor_sum(db)
        await wait_until(lambda c=committed: events_in(db) > c, what="stream under way")
        await wait_until(lambda b=before: cursor_sum(db) > b, what="this sidecar forwarding")
        sidecar.kill()
        await asyncio.sleep(down)
        sidecar.start()
    await stream
    await wait_forwarded(db)
    assert_exactly_once(await read_stream(cluster.urls), db)
    assert_tables(db, COUNT)
    assert sidecar.stop() == 0 and agent.stop() == 0


async def test_whole_cluster_down_records_wait_then_arrive_once(
    prosody: ProsodyServer, tmp_path: Path, cluster: NatsCluster, procs: Spawn
) -> None:
    """The cluster down during a stream: ingestion goes on, records wait, forward_lagging fires, all arrive once after."""
    db, jid, agent, sidecar = await start_pair(prosody, tmp_path, cluster, procs, XMPPMON_FORWARD__MAX_LAG_SECONDS="3")
    rate = 1000
    count = int(rate * (OUTAGE + 6))
    stream = stream_events(prosody, jid, count, rate, tmp_path / "sent.log")
    await wait_until(lambda: events_in(db) > 500, what="stream under way")
    await asyncio.to_thread(cluster.stop)
    down = time.monotonic()
    committed = events_in(db)
    await wait_until(lambda: forward_state(db, "state") in ("unreachable", "retrying"), timeout=20, what="outage seen")
    cursor = cursor_sum(db)
    await wait_until(lambda: db_value(db, "SELECT state FROM alerts WHERE code = 'forward_lagging'") == "firing",
                     timeout=OUTAGE, what="forward_lagging firing")  # fmt: skip
    await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
    # Ingestion never waited on the cluster, and nothing moved the cursor while it was away.
    assert events_in(db) > committed + rate * OUTAGE / 4
    assert cursor_sum(db) == cursor
    assert not caught_up(db) and float(forward_state(db, "lag_seconds") or 0) > 3
    await asyncio.to_thread(cluster.start)
    await stream
    await wait_forwarded(db, timeout=120)
    assert_exactly_once(await read_stream(cluster.urls), db)
    assert_tables(db, count, lagging=True)
    await wait_until(lambda: db_value(db, "SELECT state FROM alerts WHERE code = 'forward_lagging'") == "resolved",
                     timeout=20, what="forward_lagging resolved")  # fmt: skip
    assert sidecar.stop() == 0 and agent.stop() == 0


async def _stream_info(cluster: NatsCluster) -> nats.js.api.StreamInfo:
    nc = await nats.connect(servers=cluster.urls)
    try:
        return await nc.jetstream().stream_info(STREAM)
    finally:
        await nc.close()
