"""Notifications per second through the webhook sink to a local receiver, and creation-to-delivery latency.

Run: ``.venv/bin/python bench/bench_sidecar.py [--count 5000] [--batch 100]``. Two phases:
a burst (``count`` notifications already in the outbox: throughput) and a trickle (notifications
created one by one while the sidecar runs: latency without a backlog).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from loguru import logger
from pytest_httpserver import HTTPServer
from werkzeug import Response

from agent.config import AlertSettings, Settings, StoreSettings
from agent.events import epoch, parse_event
from agent.sidecar.runner import Sidecar
from agent.store import Store
from agent.store.outbox import Outbox


def event(i: int):
    return parse_event(
        {"id": f"e{i}", "kind": "api", "app": f"app{i}", "ts": "2026-11-22T10:00:00.000Z"},
        '{"api":"reach","status":401}',
        65536,
    )


def latencies(path: Path, since_id: int) -> list[float]:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT n.created_at, d.finished_at FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
        " WHERE d.status = 'delivered' AND n.id > ?",
        (since_id,),
    ).fetchall()
    conn.close()
    return sorted((epoch(done) - epoch(made)) * 1000 for made, done in rows)


def delivered(path: Path) -> int:
    conn = sqlite3.connect(path)
    n = conn.execute("SELECT count(*) FROM delivery_state WHERE state = 'delivered'").fetchone()[0]
    conn.close()
    return int(n)


def report(name: str, lat: list[float], seconds: float | None = None) -> None:
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    rate = f", {len(lat) / seconds:,.0f} notifications/s" if seconds else ""
    print(
        f"{name}: {len(lat)} delivered{rate}; creation-to-delivery p50 {p(0.5):.1f} ms,"
        f" p99 {p(0.99):.1f} ms, mean {statistics.mean(lat):.1f} ms"
    )


async def main(count: int, batch: int, trickle: int) -> None:
    logger.remove()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    path = Path(tempfile.mkdtemp()) / "bench.db"
    with HTTPServer(host="127.0.0.1", threaded=True) as http:
        http.expect_request("/alerts").respond_with_handler(lambda r: Response("{}", status=200))
        store = await Store.open(StoreSettings(path=path, flush_ms=1), AlertSettings())
        store.submit_events([event(i) for i in range(count)], "r")
        await store.barrier()
        settings = Settings(
            store=StoreSettings(path=path),
            sidecar={
                "sinks": [{"type": "webhook", "url": http.url_for("/alerts"), "max_batch": batch}],
                "poll_seconds": 0.005,
                "agent_down_after": 3600,
            },
        )
        outbox = await Outbox.open(path, settings.alerts)
        sidecar = Sidecar(settings, outbox)
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(sidecar.run(stop))
        while delivered(path) < count:
            await asyncio.sleep(0.01)
        burst = time.perf_counter() - started
        report(f"burst of {count} (batches of {batch})", latencies(path, 0), burst)
        for i in range(count, count + trickle):  # one notification every 20 ms
            store.submit_events([event(i)], "r")
            await store.barrier()
            await asyncio.sleep(0.02)
        while delivered(path) < count + trickle:
            await asyncio.sleep(0.01)
        report(f"trickle of {trickle} (one per 20 ms)", latencies(path, count))
        stop.set()
        await task
        await sidecar.close()
        await outbox.close()
        await store.close()
        http.clear()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--trickle", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.batch, args.trickle))
