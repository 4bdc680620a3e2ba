"""What the forwarding change log costs the writer: events/s committed by the real store, per design.

The store is fed already-parsed events (as bench/pipeline.py's SQLite ceiling), so the figures
show the write cost alone, the part a change log adds to. Designs, same run, same events:

* ``none``: migrations 1-3 only (the triggers of migration 6 dropped): the ceiling;
* ``rowids + state_changes`` (chosen, migration 6): appended tables are read by rowid, state
  upserts are recorded by triggers;
* ``changes table of refs``: plus one row per appended record in an ordered ``changes`` table
  (id AUTOINCREMENT, source, rowid) written by triggers — one ordered log for everything;
* ``changes table of copies``: the same with a copy of the record's payload, so the log
  survives retention of the source tables on its own.

Two mixes: ``history`` (activity events only, the bulk of a real stream) and ``mixed`` (every
kind in equal shares: 40 % state upserts). Usage: .venv/bin/python bench/changelog.py [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402

from agent.config import load_settings  # noqa: E402
from agent.events import Event, parse_event  # noqa: E402
from agent.lab.emulator.wire import KINDS, make_payload, utc_ts  # noqa: E402
from agent.store import Store  # noqa: E402

STATE_TRIGGERS = [f"{t}_{w}" for t in ("devices", "tags", "tokens", "push") for w in ("changed", "updated")]

REFS = """
CREATE TABLE changes (id INTEGER PRIMARY KEY AUTOINCREMENT, source INTEGER NOT NULL, rid INTEGER NOT NULL);
CREATE TRIGGER events_log AFTER INSERT ON events BEGIN INSERT INTO changes (source, rid) VALUES (1, new.id); END;
CREATE TRIGGER api_log AFTER INSERT ON api_calls BEGIN INSERT INTO changes (source, rid) VALUES (2, new.id); END;
"""
COPIES = """
CREATE TABLE changes (id INTEGER PRIMARY KEY AUTOINCREMENT, source INTEGER NOT NULL, rid INTEGER NOT NULL,
    event_id TEXT, app TEXT, kind TEXT, ts TEXT, received_at TEXT, payload TEXT);
CREATE TRIGGER events_log AFTER INSERT ON events BEGIN INSERT INTO changes VALUES
    (NULL, 1, new.id, new.event_id, new.app, new.kind, new.ts, new.received_at, new.payload); END;
CREATE TRIGGER api_log AFTER INSERT ON api_calls BEGIN INSERT INTO changes VALUES
    (NULL, 2, new.id, new.event_id, new.app, 'api', new.ts, new.received_at, new.payload); END;
"""
DESIGNS = {"none": None, "rowids + state_changes (chosen)": "", "changes table of refs": REFS,
           "changes table of copies": COPIES}  # fmt: skip


def make_events(count: int, kinds: tuple[str, ...], seed: int) -> list[Event]:
    import orjson

    rng = random.Random(seed)
    ts = utc_ts(time.time())
    events = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        text = orjson.dumps(make_payload(kind, rng)).decode()
        events.append(parse_event({"id": f"e-{seed}-{i:08d}", "kind": kind, "app": "demo", "ts": ts}, text, 65536))
    return events


async def rate(db: Path, design: str | None, events: list[Event]) -> float:
    settings = load_settings(None, store={"path": str(db)})
    store = await Store.open(settings.store)
    await store.close()
    conn = sqlite3.connect(db)
    if design is None:
        for name in STATE_TRIGGERS:
            conn.execute(f"DROP TRIGGER {name}")
    elif design:
        conn.executescript(design)
    conn.commit()
    conn.close()
    store = await Store.open(settings.store)
    ts = utc_ts(time.time())
    started = time.perf_counter()
    for i in range(0, len(events), 50):
        store.submit_events(events[i : i + 50], ts)
        if i % 5000 == 0:
            await asyncio.sleep(0)
    await store.barrier()
    elapsed = time.perf_counter() - started
    await store.close()
    return len(events) / elapsed


async def main() -> None:
    logger.remove()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of N per design (noisy machine)")
    args = parser.parse_args()
    mixes = {"history": ("activity",), "mixed": KINDS}
    results: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="xmppmon-changelog-") as tmp:
        for mix, kinds in mixes.items():
            events = make_events(args.events, kinds, seed=7)
            for n in range(args.rounds):
                # Interleaved rounds, so that a slow moment of the machine hits every design alike.
                for name, design in DESIGNS.items():
                    db = Path(tmp) / f"{mix}-{n}-{abs(hash(name))}.db"
                    value = await rate(db, design, events)
                    results[mix, name] = max(results.get((mix, name), 0.0), value)
    print(f"\n{'design':<34} {'mix':<8} {'events/s':>10} {'vs none':>8}")
    for mix in mixes:
        base = results[mix, "none"]
        for name in DESIGNS:
            value = results[mix, name]
            print(f"{name:<34} {mix:<8} {value:>10,.0f} {value / base:>8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
