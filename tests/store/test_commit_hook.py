"""The writer's commit hook reports exactly what each commit wrote: rows per kind, counters, quarantine reasons."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

from agent.config import StoreSettings
from agent.events import Event, parse_event
from agent.store import Commit, Quarantined, Store

TS = "2026-11-22T10:00:00.000Z"
TEXT = {
    "activity": '{"device_id":"d-%d"}',
    "crash": '{"device_id":"d-%d"}',
    "api": '{"api":"reach","status":200,"latency_ms":5}',
    "device": '{"device_id":"d-%d","model":"m"}',
}


def event(n: int, kind: str, ts: str = TS) -> Event:
    return parse_event({"id": f"e-{n}", "kind": kind, "app": "demo", "ts": ts}, TEXT[kind].replace("%d", str(n)), 65536)


def held(db: Path) -> Counter[str]:
    conn = sqlite3.connect(db)
    try:
        kinds = Counter(dict(conn.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall()))
        kinds["api"] = conn.execute("SELECT count(*) FROM api_calls").fetchone()[0]
        return +kinds
    finally:
        conn.close()


async def test_kinds_count_rows_written_not_duplicates(tmp_path: Path) -> None:
    """A batch mixing new events and redelivered ones counts only the new rows, per kind (the duplicate path)."""
    db = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=db, flush_ms=5))
    commits: list[Commit] = []
    store.on_commit.append(commits.append)
    try:
        store.submit_events([event(n, "activity") for n in range(10)] + [event(100, "api")], TS)
        await store.barrier()
        # Redelivered: activity 0-9 and the api call again, with new crash and activity rows among them.
        again = [event(n, "activity") for n in range(10)] + [event(100, "api")]
        store.submit_events(again + [event(n, "crash") for n in range(200, 205)] + [event(300, "activity")], TS)
        store.submit_events([event(400, "device"), event(400, "device", "2026-11-22T09:00:00.000Z")], TS)
        store.count("stanzas", 3)
        store.submit_quarantine(Quarantined("unknown kind 'x'", "<event/>", "monitor.localhost", None, None, TS))
        await store.barrier()
    finally:
        await store.close()
    written: Counter[str] = Counter()
    for commit in commits:
        written.update(commit.kinds)
    # The device's older copy changes nothing: one row written for it.
    assert written == held(db) + Counter({"device": 1}) == Counter({"activity": 11, "crash": 5, "api": 1, "device": 1})
    assert sum(c.duplicates for c in commits) == 11
    assert sum((c.counters for c in commits), Counter())["stanzas"] == 3
    assert [r for c in commits for r in c.quarantine_reasons] == ["unknown kind 'x'"]
