"""The agent's own ceiling, without the XMPP server: stream bytes -> parser -> plugin -> committed rows.

Prosody routes far fewer large stanzas per second than the agent can take (measured in
bench/run.py), so the end-to-end run cannot show what the agent itself can do. This feeds the
exact bytes a server would send (a c2s stream of Monitor API messages, as the emulator builds them)
into the agent's real slixmpp client and store, in chunks of 64 KiB as socket reads would deliver
them, and times until every event is committed. Next to it, in the same run:

* the SQLite-only ceiling of the same schema (the store fed already-parsed events),
* a naive script (slixmpp + sqlite3, one INSERT and COMMIT per event, as a user would write
  from the Monitor API docs) fed the same bytes.

With ``--metrics`` it measures the cost of the Prometheus metrics instead: the same agent runs with
and without them (``AgentMetrics`` on the store's commit hook and the session's hooks, its listener
scraped every second, as ``xmppmon run`` does with ``XMPPMON_METRICS__LISTEN``), in alternating
rounds, and prints the median rate of each and their ratio.

Usage: .venv/bin/python bench/pipeline.py [--events N] [--profile] [--metrics [--rounds N]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slixmpp import ClientXMPP  # noqa: E402
from slixmpp.xmlstream.handler import Callback  # noqa: E402
from slixmpp.xmlstream.matcher import MatchXPath  # noqa: E402

from agent.config import load_settings  # noqa: E402
from agent.events import parse_event  # noqa: E402
from agent.health import Health  # noqa: E402
from agent.lab.emulator import EmulatorOptions  # noqa: E402
from agent.lab.emulator.wire import EventFactory, message_xml, utc_ts  # noqa: E402
from agent.lab.net import free_loopback_port  # noqa: E402
from agent.metrics.agent import agent_metrics  # noqa: E402
from agent.session import MonitorSession  # noqa: E402
from agent.store import Store  # noqa: E402
from bench.feed import open_stream, reads  # noqa: E402

NS = "urn:xmppmon:monitor:1"


def make_stream(events: int, batch: int, kinds: tuple[str, ...] = ("activity",)) -> tuple[list[bytes], int]:
    factory = EventFactory(EmulatorOptions(kinds=kinds, seed=1))
    ts = utc_ts(time.time())

    def stanzas() -> Iterator[bytes]:
        for n in range(0, events, batch):
            body = [factory.valid("demo", ts)[2] for _ in range(min(batch, events - n))]
            yield message_xml("monitor.localhost", "agent@localhost/xmppmon", f"m{n + len(body)}", body).encode()

    return list(reads(stanzas())), events


async def feed(client: ClientXMPP, chunks: list[bytes]) -> None:
    open_stream(client)
    for chunk in chunks:
        client.data_received(chunk)
        await asyncio.sleep(0)  # the writer task runs between socket reads, as in production


def scraper(port: int, stop: threading.Event) -> None:
    """Prometheus' part: fetch /metrics every second until ``stop``."""
    while not stop.wait(1.0):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            answer.read()


async def agent_rate(db: Path, chunks: list[bytes], total: int, metrics: bool = False) -> tuple[float, float]:
    """Events per second of wall time and per second of this process's CPU time (all its threads)."""
    port = free_loopback_port()
    settings = load_settings(None, store={"path": str(db)}, metrics={"listen": f"127.0.0.1:{port}" if metrics else ""})
    store = await Store.open(settings.store)
    session = MonitorSession(settings, store)
    health = Health(store, session)  # as xmppmon run: the watchdog's health object is always there
    stop = threading.Event()
    with agent_metrics(settings, store, session, health):
        if metrics:
            threading.Thread(target=scraper, args=(port, stop), daemon=True).start()
        started, cpu = time.perf_counter(), time.process_time()
        await feed(session.client, chunks)
        await store.barrier()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        stop.set()
    await store.close()
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    assert stored == total, (stored, total)
    return total / elapsed, total / cpu


async def sqlite_ceiling(db: Path, total: int) -> float:
    """The store alone, fed parsed events: what SQLite and the writer can take."""
    settings = load_settings(None, store={"path": str(db)})
    store = await Store.open(settings.store)
    ts = utc_ts(time.time())
    events = [
        parse_event({"id": f"e-{i:08d}-x", "kind": "activity", "app": "demo", "ts": ts},
                    '{"device_id":"d-1","session_id":"s-1","name":"Home","duration_ms":1200}', 65536)
        for i in range(total)
    ]  # fmt: skip
    started = time.perf_counter()
    for i in range(0, total, 50):
        store.submit_events(events[i : i + 50], ts)
        if i % 5000 == 0:
            await asyncio.sleep(0)
    await store.barrier()
    elapsed = time.perf_counter() - started
    await store.close()
    return total / elapsed


async def naive_rate(db: Path, chunks: list[bytes], total: int) -> float:
    """What a user would write from the docs: parse, insert and commit each event as it comes."""
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE events (event_id TEXT UNIQUE, app TEXT, kind TEXT, ts TEXT, payload TEXT)")
    client = ClientXMPP("agent@localhost/naive", "x")
    count = 0

    def on_message(msg: object) -> None:
        nonlocal count
        for ev in msg.xml.iterfind(f"{{{NS}}}event"):  # type: ignore[attr-defined]
            payload = json.loads(ev.text)
            conn.execute(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)",
                (ev.get("id"), ev.get("app"), ev.get("kind"), ev.get("ts"), json.dumps(payload)),
            )
            conn.commit()
            count += 1

    client.register_handler(Callback("naive", MatchXPath(f"{{jabber:client}}message/{{{NS}}}event"), on_message))
    started = time.perf_counter()
    await feed(client, chunks)
    elapsed = time.perf_counter() - started
    conn.close()
    assert count == total
    return total / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--naive-events", type=int, default=5_000, help="the naive script is slow")
    parser.add_argument("--profile", action="store_true", help="print a pyinstrument profile of batch 50")
    parser.add_argument("--metrics", action="store_true", help="compare the agent with and without its metrics")
    parser.add_argument("--rounds", type=int, default=5, help="--metrics: alternating rounds of each")
    args = parser.parse_args()
    if args.metrics:
        await metrics_cost(args.events, args.rounds)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="xmppmon-pipeline-") as tmp:
        tmpdir = Path(tmp)
        ceiling = await sqlite_ceiling(tmpdir / "ceiling.db", args.events)
        for batch in (1, 50):
            chunks, total = make_stream(args.events, batch)
            if args.profile and batch == 50:
                from pyinstrument import Profiler

                profiler = Profiler(async_mode="enabled")
                profiler.start()
            rate, _ = await agent_rate(tmpdir / f"agent{batch}.db", chunks, total)
            if args.profile and batch == 50:
                profiler.stop()
                print(profiler.output_text(unicode=False, color=False, show_all=False))
            rows.append((f"agent, {batch} event(s)/stanza", total, rate))
        chunks, total = make_stream(args.naive_events, 50)
        naive = await naive_rate(tmpdir / "naive.db", chunks, total)
    print(f"\n{'run':<34} {'events':>8} {'events/s':>10} {'vs SQLite ceiling':>18} {'vs naive':>9}")
    print(f"{'SQLite-only ceiling (store)':<34} {args.events:>8} {ceiling:>10,.0f} {1:>18.2f} {ceiling / naive:>9.1f}")
    for name, total, rate in rows:
        print(f"{name:<34} {total:>8} {rate:>10,.0f} {rate / ceiling:>18.2f} {rate / naive:>9.1f}")
    print(
        f"{'naive script, 50 events/stanza':<34} {args.naive_events:>8} {naive:>10,.0f} {naive / ceiling:>18.2f} {1:>9.1f}"
    )


async def metrics_cost(events: int, rounds: int) -> None:
    """Alternate rounds without and with metrics; a shared, noisy machine drifts between rounds.

    Wall-clock rates on a shared machine move with the other processes' load; events per CPU
    second (the process's own threads) is the steadier figure for what the metrics cost.
    """
    results: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="xmppmon-pipeline-") as tmp:
        for batch in (1, 50):
            chunks, total = make_stream(events, batch)
            for n in range(rounds):
                for metrics in (False, True) if n % 2 == 0 else (True, False):
                    db = Path(tmp) / f"m{batch}-{n}-{metrics}.db"
                    results.setdefault((batch, metrics), []).append(await agent_rate(db, chunks, total, metrics))
    print(f"\n{'events/stanza':>13} {'figure':>16} {'without':>10} {'with':>10} {'with ÷ without':>15}")
    for batch in (1, 50):
        for i, figure in enumerate(("events/s", "events/CPU-s")):
            off = statistics.median(r[i] for r in results[(batch, False)])
            on = statistics.median(r[i] for r in results[(batch, True)])
            print(f"{batch:>13} {figure:>16} {off:>10,.0f} {on:>10,.0f} {on / off:>15.3f}")
    print(f"(medians of {rounds} alternating rounds each, one run; every round, events/s and events/CPU-s:)")
    for (batch, metrics), rates in sorted(results.items()):
        shown = ", ".join(f"{w:,.0f}/{c:,.0f}" for w, c in rates)
        print(f"  batch {batch:>2} {'with' if metrics else 'without':>7}: {shown}")


if __name__ == "__main__":
    asyncio.run(main())
