"""The WAL's largest size while ``xmppmon tail`` follows a steady stream for an hour.

Usage: .venv/bin/python bench/wal_tail.py [--seconds 3600] [--rate 5000] [--history-days 0.01]

The agent (its slixmpp client and store, in this process, fed the wire bytes a server would send,
as bench/pipeline.py does) takes ``--rate`` events/s in messages of 50 while a real
``xmppmon tail`` process follows the events table (polling every 0.5 s); the WAL file's size is
sampled every 0.2 s. A reader holding one read transaction for the whole run would keep the WAL
from ever starting over; with short reads it stays bounded. ``--history-days`` keeps the database
from growing without end over the hour (0.01 days is about 14 minutes), so prune passes run too.
Prints the WAL's peak, its size over time, the database size, and the lines ``tail`` printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
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
from bench.feed import open_stream  # noqa: E402

BATCH = 50


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--history-days", type=float, default=0.01)
    parser.add_argument("--dir", type=Path, default=None, help="where the database goes (default: a temp dir)")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    with tempfile.TemporaryDirectory(prefix="xmppmon-wal-", dir=args.dir) as tmp:
        db = Path(tmp) / "m.db"
        settings = load_settings(None, store={"path": str(db)})
        store = await Store.open(settings.store)
        store.upkeep.retain(RetentionSettings(history_days=args.history_days, interval=60))
        session = MonitorSession(settings, store)
        client = session.client
        open_stream(client)
        factory = EventFactory(EmulatorOptions(kinds=("activity", "event", "job", "error", "crash"), seed=5))
        out = Path(tmp) / "tail.out"
        with out.open("wb") as sink:
            tail = subprocess.Popen(
                [sys.executable, "-m", "agent", "tail", "--database", str(db), "--interval", "0.5", "-n", "0"],
                stdout=sink, stderr=subprocess.DEVNULL, env={k: v for k, v in os.environ.items() if not k.startswith("XMPPMON_")},
            )  # fmt: skip
        peak, samples, sent = 0, [], 0
        started = last_sample = time.monotonic()
        try:
            while (elapsed := time.monotonic() - started) < args.seconds:
                due = int(elapsed * args.rate)
                while sent + BATCH <= due:
                    body = [factory.valid("demo", utc_ts(time.time()))[2] for _ in range(BATCH)]
                    client.data_received(message_xml("monitor.localhost", "a@localhost/x", f"m{sent}", body).encode())
                    sent += BATCH
                if time.monotonic() - last_sample >= 0.2:
                    last_sample = time.monotonic()
                    wal = os.stat(f"{db}-wal").st_size if os.path.exists(f"{db}-wal") else 0
                    peak = max(peak, wal)
                    samples.append((elapsed, wal))
                    if len(samples) % 300 == 0:  # every minute
                        print(f"  {elapsed / 60:5.1f} min: {sent:>10,} events sent, WAL {wal / 1e6:6.1f} MB"
                              f" (peak {peak / 1e6:.1f} MB), database {db.stat().st_size / 1e6:8.1f} MB", flush=True)  # fmt: skip
                await asyncio.sleep(0.005)
            await store.barrier()
        finally:
            tail.terminate()
            tail.wait(10)
            await store.close()
        lines = sum(1 for _ in out.open("rb"))
        print(
            f"\n{args.seconds / 60:.0f} min at {args.rate:,.0f} events/s ({sent:,} events) with `xmppmon tail` following:"
        )
        print(f"  WAL peak {peak / 1e6:.1f} MB; median {sorted(w for _, w in samples)[len(samples) // 2] / 1e6:.1f} MB")
        print(f"  `tail` printed {lines:,} lines; retention {args.history_days:g} days; passes {store.upkeep.passes}")


if __name__ == "__main__":
    asyncio.run(main())
