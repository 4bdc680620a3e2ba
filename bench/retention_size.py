"""The database file under retention: 10 million events, ts one day further every million, 2 days kept.

Usage: .venv/bin/python bench/retention_size.py [--events 10000000] [--per-day 1000000] [--days 2]
                                               [--interval 5] [--runs on,off] [--max-minutes 0]

The agent alone, as in bench/pipeline.py: the wire bytes a server would send (Monitor API
messages of 50 events, as the emulator builds them) go into the agent's real slixmpp client and
its store, in this process. Event time starts ``--events / --per-day`` days ago and advances one
day per ``--per-day`` events; the retention's clock follows it (``Upkeep.clock``), so passes every
``--interval`` seconds delete what is older than ``--days`` days of event time, as if the stream
had taken that long. After each million the run waits for the next pass to finish (retention on)
and prints the database file's size, its WAL, its free pages and the insert rate of that million.
Target: flat from 4 M on, under 10 % growth from 5 M to 10 M, next to the same run with
retention off. ``--max-minutes`` stops a run early (and says so): the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402

from agent.config import load_settings  # noqa: E402
from agent.config.retention import RetentionSettings  # noqa: E402
from agent.lab.emulator import EmulatorOptions  # noqa: E402
from agent.lab.emulator.wire import EventFactory, message_xml, utc_ts  # noqa: E402
from agent.session import MonitorSession  # noqa: E402
from agent.store import Store  # noqa: E402
from bench.feed import open_stream, reads  # noqa: E402

BATCH = 50
MILLION = 1_000_000


def chunks_of(factory: EventFactory, first: int, count: int, start: float, per_day: int) -> list[bytes]:
    """``count`` events from number ``first``, stamped start + n/per_day days, as 64 KiB socket reads."""

    def stanzas() -> Iterator[bytes]:
        for n in range(first, first + count, BATCH):
            ts = utc_ts(start + n / per_day * 86_400)
            body = [factory.valid("demo", ts)[2] for _ in range(min(BATCH, first + count - n))]
            yield message_xml("monitor.localhost", "agent@localhost/xmppmon", f"m{n}", body).encode()

    return list(reads(stanzas()))


def sizes(db: Path) -> tuple[int, int, int, int]:
    wal = Path(f"{db}-wal")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    return db.stat().st_size, wal.stat().st_size if wal.exists() else 0, free, rows


async def run(db: Path, args: argparse.Namespace, retention: bool) -> list[tuple[int, float, int, int, int, int, int]]:
    settings = load_settings(None, store={"path": str(db)})
    store = await Store.open(settings.store)
    start = time.time() - args.events / args.per_day * 86_400
    sim_now = [start]
    if retention:
        store.upkeep.retain(RetentionSettings(history_days=args.days, interval=args.interval),
                            clock=lambda: sim_now[0], first_pass_after=args.interval)  # fmt: skip
    session = MonitorSession(settings, store)
    client = session.client
    open_stream(client)
    factory = EventFactory(EmulatorOptions(kinds=("activity", "event", "job", "error", "crash"), seed=3))
    out = []
    began = time.monotonic()
    for first in range(0, args.events, MILLION):
        count = min(MILLION, args.events - first)
        chunks = chunks_of(factory, first, count, start, args.per_day)
        t = time.monotonic()
        for i, chunk in enumerate(chunks):
            # The clock follows the stream: "now" is the newest event's time.
            sim_now[0] = start + (first + (i + 1) * count / len(chunks)) / args.per_day * 86_400
            client.data_received(chunk)
            await asyncio.sleep(0)
            while store.pending > 100_000:
                await asyncio.sleep(0.005)
        await store.barrier()
        rate = count / (time.monotonic() - t)
        at_barrier = db.stat().st_size
        if retention:
            # Measure after a pass that began once this million was in: the window as it stands.
            done = store.upkeep.passes + (1 if store.upkeep.pruning else 0)
            deadline = time.monotonic() + 10 * args.interval + 300
            while store.upkeep.passes < done + 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        file, wal, free, rows = sizes(db)
        out.append((first + count, rate, file, wal, free, rows, at_barrier))
        print(f"  {'on ' if retention else 'off'} {(first + count) / MILLION:>4.0f} M: file {file / 1e6:8.1f} MB"
              f" ({at_barrier / 1e6:.1f} MB before the pass), WAL {wal / 1e6:6.1f} MB, free pages {free:>7},"
              f" rows {rows:>9}, {rate:>8,.0f} events/s", flush=True)  # fmt: skip
        if args.max_minutes and time.monotonic() - began > args.max_minutes * 60:
            print(f"  stopped after {args.max_minutes} minutes (--max-minutes)", flush=True)
            break
    await store.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10 * MILLION)
    parser.add_argument("--per-day", type=int, default=MILLION, help="events per day of event time")
    parser.add_argument("--days", type=float, default=2, help="history retention in days")
    parser.add_argument("--interval", type=float, default=5, help="seconds between prune passes")
    parser.add_argument("--runs", default="on,off", help="retention on, off, or both (in this order)")
    parser.add_argument("--max-minutes", type=float, default=0, help="stop each run after this long (0: never)")
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    results = {}
    with tempfile.TemporaryDirectory(prefix="xmppmon-retention-", dir=args.dir) as tmp:
        for name in args.runs.split(","):
            print(
                f"retention {name}: {args.events:,} events, {args.per_day:,} per day, {args.days:g} days kept",
                flush=True,
            )
            results[name] = await run(Path(tmp) / f"{name}.db", args, retention=name == "on")
            Path(tmp, f"{name}.db").unlink()
    print(f"\n{'events':>7} {'file MB (on)':>13} {'before pass':>12} {'events/s (on)':>14} {'file MB (off)':>14}"
          f" {'events/s (off)':>15}")  # fmt: skip
    on, off = results.get("on", []), results.get("off", [])
    for i in range(max(len(on), len(off))):
        a = on[i] if i < len(on) else None
        b = off[i] if i < len(off) else None
        n = (a or b)[0]  # type: ignore[index]
        print(f"{n / MILLION:>6.0f}M {a[2] / 1e6 if a else float('nan'):>13.1f} {a[6] / 1e6 if a else float('nan'):>12.1f}"
              f" {a[1] if a else float('nan'):>14,.0f}"
              f" {b[2] / 1e6 if b else float('nan'):>14.1f} {b[1] if b else float('nan'):>15,.0f}")  # fmt: skip
    if len(on) >= 10:
        growth, raw = on[9][2] / on[4][2] - 1, on[9][6] / on[4][6] - 1
        print(
            f"retention on: file growth 5M -> 10M {growth * 100:+.1f} % after the pass, {raw * 100:+.1f} % before it"
            " (target under 10 %)"
        )
    if on and off:
        k = min(len(on), len(off))
        rate_on = sum(r[1] for r in on[:k]) / k
        rate_off = sum(r[1] for r in off[:k]) / k
        print(
            f"mean insert rate over the first {k} M: on {rate_on:,.0f}/s, off {rate_off:,.0f}/s ({rate_on / rate_off:.2f}x)"
        )


if __name__ == "__main__":
    asyncio.run(main())
