"""Forwarding to NATS JetStream, end to end: emulator -> Prosody -> agent -> SQLite -> sidecar -> 3-node R3 stream.

Usage: .venv/bin/python bench/forward.py [--events 100000] [--rates 1000,10000] [--seconds 10] [--quick]

Everything runs on 127.0.0.1 in a temporary directory, as separate processes as in production,
measured from outside (the database and the stream), and stops by itself. Prints:

* capacity: the agent alone (forwarding off) ingests ``--events``; then a forwarding sidecar drains
  that backlog: the forwarder's own rate against the agent's ingest rate;
* throughput: the agent with forwarding on: the agent's ingest rate (records committed per second, first arrival to last) and
  the forwarder's rate (records stored in the stream per second, its first to its last message),
  in the same run of ``--events`` events sent as fast as the emulator can; their ratio, and how
  long after the last commit the last record was in the stream;
* lag at each of ``--rates`` events/s for ``--seconds``: for every record, JetStream's timestamp
  of its message minus the record's ``received_at`` (the agent's arrival time), p50 and p99;
* the same lag with the agent's store committing at each rate in this process (no XMPP server),
  which isolates forwarding from what Prosody can route on the machine at hand;
* the sidecar's RSS after start and its peak (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig  # noqa: E402

from agent.lab.nats import NatsCluster  # noqa: E402
from agent.lab.prosody import ProsodyServer  # noqa: E402
from bench.run import _value, rss_mb  # noqa: E402

PY = sys.executable
TABLES = ("events", "api_calls", "state_changes")


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Pair:
    """An agent and a forwarding sidecar for one account, its own database and stream."""

    def __init__(
        self, server: ProsodyServer, cluster: NatsCluster, workdir: Path, name: str, forward: bool = True
    ) -> None:
        self.jid = server.register(name, "pw")
        self.db = workdir / f"{name}.db"
        self.stream = f"BENCH_{name.upper()}"
        self.env = os.environ | {
            "XMPPMON_XMPP__JID": self.jid, "XMPPMON_XMPP__PASSWORD": "pw", "XMPPMON_XMPP__HOST": "127.0.0.1",
            "XMPPMON_XMPP__PORT": str(server.c2s_port), "XMPPMON_XMPP__CA_FILE": str(server.ca_file),
            "XMPPMON_MONITOR__JID": server.component, "XMPPMON_STORE__PATH": str(self.db),
            "XMPPMON_LOG__LEVEL": "WARNING", "XMPPMON_SIDECAR__SINKS": "[]",
            "XMPPMON_FORWARD__NATS_URLS": json.dumps(cluster.urls), "XMPPMON_FORWARD__STREAM": self.stream,
            "XMPPMON_FORWARD__ACCOUNT": name,
        }  # fmt: skip
        if not forward:
            self.env["XMPPMON_FORWARD__NATS_URLS"] = "[]"
        self.forward = forward
        self.agent = subprocess.Popen([PY, "-m", "agent", "run"], env=self.env)
        self.sidecar = subprocess.Popen([PY, "-m", "agent", "sidecar"], env=self.env)
        deadline = time.monotonic() + 60
        while not (self.value("SELECT value FROM agent_state WHERE key='session'") == "connected"
                   and (not forward or self.value("SELECT value FROM forward_state WHERE key='state'") == "forwarding")):  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError("agent or forwarder not ready in 60 s")
            time.sleep(0.05)
        self.rss_start = rss_mb(self.sidecar.pid)

    def value(self, sql: str) -> object:
        return _value(self.db, sql)

    def rows(self) -> int:
        return sum(int(self.value(f"SELECT count(*) FROM {t}") or 0) for t in TABLES)

    def forwarded(self) -> bool:
        if not self.forward:
            return True
        for table in TABLES:
            top = self.value(f"SELECT coalesce(max(id), 0) FROM {table}")
            cursor = self.value(f"SELECT last_id FROM forward_cursor WHERE source = '{table}'")
            if top is None or cursor is None or int(cursor) < int(top):  # type: ignore[call-overload]
                return False
        return True

    def stop(self) -> None:
        for proc in (self.sidecar, self.agent):
            proc.terminate()
            proc.wait(30)


def _direct_done(db: Path) -> bool:
    for table in TABLES:
        top = _value(db, f"SELECT coalesce(max(id), 0) FROM {table}")
        cursor = _value(db, f"SELECT last_id FROM forward_cursor WHERE source = '{table}'")
        if top is None or cursor is None or int(cursor) < int(top):  # type: ignore[call-overload]
            return False
    return True


def emulate(server: ProsodyServer, jid: str, count: int, rate: float, batch: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PY, "-m", "agent", "emulate", "--port", str(server.component_port), "--to", jid, "--count", str(count),
         "--batch", str(batch), "--rate", str(rate), "--seed", "15", "--log-level", "WARNING"],
        env=os.environ | {"XMPPMON_EMULATOR_SECRET": server.component_secret}, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def wait(pair: Pair, sent: int, timeout: float) -> float:
    """Wait until the agent committed ``sent`` events and the forwarder caught up; return when it did."""
    deadline = time.monotonic() + timeout
    while pair.value("SELECT value FROM counters WHERE name = 'events_received'") != sent or not pair.forwarded():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done in {timeout:.0f} s")
        time.sleep(0.02)
    return time.time()


async def stream_ends(urls: list[str], stream: str) -> tuple[int, float, float]:
    """(messages, time of the first, time of the last) from JetStream itself."""
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        first = await js.get_msg(stream, seq=state.first_seq)
        last = await js.get_msg(stream, seq=state.last_seq)
        assert first.time and last.time
        return state.messages, first.time.timestamp(), last.time.timestamp()
    finally:
        await nc.close()


async def lags(urls: list[str], stream: str) -> list[float]:
    """JetStream timestamp minus received_at, for every message of the stream."""
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe("", stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE))
        found: list[float] = []
        while len(found) < total:
            for msg in await sub.fetch(2000, timeout=10):
                found.append(msg.metadata.timestamp.timestamp() - epoch(json.loads(msg.data)["received_at"]))
        return found
    finally:
        await nc.close()


async def direct_writes(db: Path, rate: float, seconds: float) -> int:
    """The agent's store in this process (no XMPP server) committing ``rate`` events/s of every kind."""
    import random

    import orjson
    from loguru import logger

    from agent.config import load_settings
    from agent.events import parse_event
    from agent.lab.emulator.wire import KINDS, make_payload, utc_ts
    from agent.store import Store

    logger.remove()
    count = int(rate * seconds)
    rng = random.Random(7)
    ts = utc_ts(time.time())
    events = [parse_event({"id": f"d-{i:08d}", "kind": KINDS[i % len(KINDS)], "app": "demo", "ts": ts},
                          orjson.dumps(make_payload(KINDS[i % len(KINDS)], rng)).decode(), 65536)
              for i in range(count)]  # fmt: skip
    store = await Store.open(load_settings(None, store={"path": str(db)}).store)
    started, sent = time.perf_counter(), 0
    while sent < count:
        due = min(count, int((time.perf_counter() - started) * rate))
        if due > sent:
            store.submit_events(events[sent:due], utc_ts(time.time()))
            sent = due
        await asyncio.sleep(0.002)
    await store.barrier()
    await store.close()
    return count


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events of the throughput run")
    parser.add_argument("--rates", default="1000,10000", help="events/s of the lag runs")
    parser.add_argument("--seconds", type=float, default=10, help="length of each lag run")
    parser.add_argument("--batch", type=int, default=50, help="events per stanza")
    parser.add_argument("--quick", action="store_true", help="20,000 events and 5 s lag runs")
    args = parser.parse_args()
    events, seconds = (20_000, 5.0) if args.quick else (args.events, args.seconds)
    with tempfile.TemporaryDirectory(prefix="xmppmon-bench-forward-") as tmp:
        workdir = Path(tmp)
        server = ProsodyServer(workdir / "prosody")
        cluster = NatsCluster(workdir / "nats", size=3)
        server.start()
        cluster.start()
        try:
            # The same blast without forwarding first: what the agent ingests when nothing reads behind it.
            pair = Pair(server, cluster, workdir, "alone", forward=False)
            emulate(server, pair.jid, events, 0, args.batch).wait(600)
            wait(pair, events, 600)
            alone = pair.rows() / (epoch(str(pair.value("SELECT max(received_at) FROM events")))
                                   - epoch(str(pair.value("SELECT min(received_at) FROM events"))))  # fmt: skip
            # Then a sidecar that forwards, started on that backlog: the forwarder's own capacity.
            pair.sidecar.terminate()
            pair.sidecar.wait(30)
            pair.env["XMPPMON_FORWARD__NATS_URLS"] = json.dumps(cluster.urls)
            pair.forward = True
            pair.sidecar = subprocess.Popen([PY, "-m", "agent", "sidecar"], env=pair.env)
            wait(pair, events, 600)
            drained, d_first, d_last = asyncio.run(stream_ends(cluster.urls, pair.stream))
            drain = drained / (d_last - d_first)
            pair.stop()
            pair = Pair(server, cluster, workdir, "blast")
            emu = emulate(server, pair.jid, events, 0, args.batch)
            wait(pair, events, 600)
            emu.wait(30)
            rows = pair.rows()
            first = epoch(str(pair.value("SELECT min(received_at) FROM events")))
            last_commit = epoch(str(pair.value("SELECT max(received_at) FROM events")))
            messages, s_first, s_last = asyncio.run(stream_ends(cluster.urls, pair.stream))
            ingest = rows / (last_commit - first)
            forward = messages / (s_last - s_first)
            blast = (events, rows, messages, ingest, forward, s_last - last_commit, pair.rss_start,
                     peak_mb(pair.sidecar.pid))  # fmt: skip
            pair.stop()
            lag_rows = []
            for rate in (float(r) for r in args.rates.split(",")):
                pair = Pair(server, cluster, workdir, f"lag{int(rate)}")
                count = int(rate * seconds)
                emulate(server, pair.jid, count, rate, 10).wait(seconds * 10 + 60)
                wait(pair, count, 300)
                span = epoch(str(pair.value("SELECT max(received_at) FROM events"))) - epoch(
                    str(pair.value("SELECT min(received_at) FROM events"))
                )
                achieved = count / max(span, 1e-3)  # arrivals at the agent, first to last
                found = asyncio.run(lags(cluster.urls, pair.stream))
                lag_rows.append((rate, achieved, len(found), pct(found, 0.5), pct(found, 0.99), max(found),
                                 pair.rss_start, peak_mb(pair.sidecar.pid)))  # fmt: skip
                pair.stop()
            direct_rows = []
            for rate in (float(r) for r in args.rates.split(",")):
                db = workdir / f"direct{int(rate)}.db"
                stream = f"BENCH_DIRECT{int(rate)}"
                env = os.environ | {
                    "XMPPMON_STORE__PATH": str(db), "XMPPMON_LOG__LEVEL": "WARNING", "XMPPMON_SIDECAR__SINKS": "[]",
                    "XMPPMON_FORWARD__NATS_URLS": json.dumps(cluster.urls), "XMPPMON_FORWARD__STREAM": stream,
                    "XMPPMON_FORWARD__ACCOUNT": f"direct{int(rate)}",
                }  # fmt: skip
                writer = asyncio.run(direct_writes(db, 1, 0.001))  # creates the database
                sidecar = subprocess.Popen([PY, "-m", "agent", "sidecar"], env=env)
                while _value(db, "SELECT value FROM forward_state WHERE key='state'") != "forwarding":
                    time.sleep(0.05)
                rss_start = rss_mb(sidecar.pid)
                writer = asyncio.run(direct_writes(db, rate, seconds))
                deadline = time.monotonic() + 300
                while (_value(db, "SELECT count(*) FROM events") or 0) and not _direct_done(db):
                    if time.monotonic() > deadline:
                        raise RuntimeError("direct run not forwarded in 300 s")
                    time.sleep(0.05)
                found = asyncio.run(lags(cluster.urls, stream))
                direct_rows.append((rate, writer, len(found), pct(found, 0.5), pct(found, 0.99), max(found),
                                    rss_start, peak_mb(sidecar.pid)))  # fmt: skip
                sidecar.terminate()
                sidecar.wait(30)
        finally:
            cluster.stop()
            server.stop()
    e, rows, messages, ingest, forward, tail, rss0, rss1 = blast
    print(f"\nthroughput, {e:,} events at full speed ({args.batch}/stanza), R3 stream on 3 local nodes:")
    print(f"{'records':>8} {'in stream':>9} {'agent rec/s':>11} {'forwarded rec/s':>15} {'ratio':>6} "
          f"{'last in stream after last commit':>32} {'sidecar RSS start→peak MB':>26}")  # fmt: skip
    print(f"{rows:>8} {messages:>9} {ingest:>11,.0f} {forward:>15,.0f} {forward / ingest:>6.2f} "
          f"{tail:>30.2f} s {rss0:>14.1f} → {rss1:.1f}")  # fmt: skip
    print(f"the agent alone (no forwarding), same events, same run: {alone:,.0f} rec/s;"
          f" with forwarding it ingested {ingest / alone:.2f} x that")  # fmt: skip
    print(f"the forwarder draining that run's backlog of {drained:,} records: {drain:,.0f} rec/s,"
          f" {drain / alone:.2f} x the agent's ingest rate alone")  # fmt: skip
    print("\nlag, JetStream timestamp - received_at, per record (10 events/stanza):")
    print(f"{'target ev/s':>11} {'achieved':>9} {'records':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'sidecar RSS start→peak MB':>26}")  # fmt: skip
    for rate, achieved, n, p50, p99, top, r0, r1 in lag_rows:
        print(f"{rate:>11,.0f} {achieved:>9,.0f} {n:>8} {p50 * 1000:>8.1f} {p99 * 1000:>8.1f} {top * 1000:>8.1f} "
              f"{r0:>14.1f} → {r1:.1f}")  # fmt: skip
    print(
        "\nthe same without Prosody: the agent's store commits at the rate in the bench process, the sidecar forwards:"
    )
    for rate, _count, n, p50, p99, top, r0, r1 in direct_rows:
        print(f"{rate:>11,.0f} {rate:>9,.0f} {n:>8} {p50 * 1000:>8.1f} {p99 * 1000:>8.1f} {top * 1000:>8.1f} "
              f"{r0:>14.1f} → {r1:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
