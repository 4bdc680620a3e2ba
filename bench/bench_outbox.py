"""The sidecar's bookkeeping alone, without HTTP: taking a backlog of notifications (``Outbox.sync``) and
draining it in rounds (``Outbox.due`` then ``Outbox.record``, every attempt delivered).

Run: ``.venv/bin/python bench/bench_outbox.py [--alerts 5000] [--batch 100]``. Each alert has a firing and a
resolved notification, so half of the backlog waits behind its alert's firing (delivery order per alert).
Prints the time of the sync, the mean time of one ``due`` and one ``record``, and the drain rate.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from loguru import logger

from agent.config import AlertRule, AlertSettings, StoreSettings
from agent.events import Event, parse_event
from agent.store import Store
from agent.store.outbox import Attempt, Outbox


def event(i: int, status: int) -> Event:
    return parse_event(
        {"id": f"e{i}-{status}", "kind": "api", "app": f"app{i}", "ts": "2026-11-22T10:00:00.000Z"},
        f'{{"api":"reach","status":{status}}}',
        65536,
    )


async def main(alerts: int, batch: int) -> None:
    logger.remove()
    path = Path(tempfile.mkdtemp()) / "bench.db"
    rules = AlertSettings(rules={"auth": AlertRule(resolve_hold_seconds=0)})
    store = await Store.open(StoreSettings(path=path, flush_ms=1), rules)
    store.submit_events([event(i, 401) for i in range(alerts)], "r")
    await store.barrier()
    store.submit_events([event(i, 200) for i in range(alerts)], "r")
    await store.barrier()
    await store.close()
    outbox = await Outbox.open(path, AlertSettings())
    # The sink exists (its cursor at 0), so it takes the whole backlog, as a sink that ran before would.
    await outbox.sync({"hook": "ordered"})
    await outbox._conn.execute("UPDATE sink_cursor SET last_id = 0")
    await outbox._conn.execute("DELETE FROM delivery_state")
    await outbox._conn.commit()
    started = time.perf_counter()
    taken = await outbox.sync({"hook": "ordered"})
    synced = time.perf_counter() - started
    due_s = record_s = 0.0
    rounds = sent = 0
    started = time.perf_counter()
    while True:
        t = time.perf_counter()
        items = await outbox.due("hook", limit=batch)
        due_s += time.perf_counter() - t
        if not items:
            break
        now = time.time()
        t = time.perf_counter()
        await outbox.record("hook", [Attempt(item, "delivered", now, now) for item in items], park_until=now)
        record_s += time.perf_counter() - t
        rounds += 1
        sent += len(items)
    drained = time.perf_counter() - started
    await outbox.close()
    print(
        f"{alerts} alerts, {taken} notifications taken in {synced * 1000:.0f} ms; drained {sent} in {rounds} rounds"
        f" of up to {batch}: {sent / drained:,.0f} notifications/s; due {due_s / max(rounds, 1) * 1000:.1f} ms,"
        f" record {record_s / max(rounds, 1) * 1000:.1f} ms per round"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alerts", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.alerts, args.batch))
