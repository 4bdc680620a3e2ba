"""Arrival-to-commit latency while a prune pass removes a million rows, against the same run without it.

Usage: .venv/bin/python bench/prune_latency.py [--old 1000000] [--rate 1000] [--batch 5] [--rounds 3]

One database is filled with ``--old`` events 40 days old, then copied. The agent (its real
slixmpp client and store, in this process, fed the wire bytes a server would send, as
bench/pipeline.py does) takes a paced stream of fresh events at ``--rate`` events/s on each copy:

* ``no pass``: retention off, nothing is pruned;
* ``prune pass``: 30 days of history retention and a pass starting after 1 s, which deletes
  every old row in steps between the stream's commits, then returns the freed pages.

Latency is measured with the writer's commit hook (``Store.track_arrivals``, ``Store.on_commit``):
from each stanza's arrival to the commit that holds it (the first half second, start-up, left out).
Both runs of a round last as long as its pass took (plus 3 s), or ``--seconds``; the rounds
alternate the two on fresh copies, so that the load of a shared machine falls on both alike.
Target: the pass run's p99 at most 2x the other's and at most 25 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402

from agent.config import load_settings  # noqa: E402
from agent.config.retention import RetentionSettings  # noqa: E402
from agent.events import iso, parse_event  # noqa: E402
from agent.lab.emulator import EmulatorOptions  # noqa: E402
from agent.lab.emulator.wire import EventFactory, message_xml, utc_ts  # noqa: E402
from agent.session import MonitorSession  # noqa: E402
from agent.store import Store  # noqa: E402
from bench.feed import open_stream  # noqa: E402

RUN_STARTED = [0.0]  # perf_counter() at the start of the last run's stream (for diagnostics)
PAYLOAD = '{"device_id":"d-%d","session_id":"s-1","name":"Home","duration_ms":1200}'


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def fill(db: Path, old: int) -> None:
    settings = load_settings(None, store={"path": str(db), "batch_size": 5000})
    store = await Store.open(settings.store)
    ts = iso(time.time() - 40 * 86400)
    for start in range(0, old, 10_000):
        store.submit_events(
            [parse_event({"id": f"old-{i:09d}", "kind": "activity", "app": "demo", "ts": ts},
                         PAYLOAD % i, 65536) for i in range(start, min(old, start + 10_000))],
            ts,
        )  # fmt: skip
        await store.barrier()
    await store.close()


async def stream(
    db: Path, rate: float, batch: int, seconds: float | None, prune: bool
) -> tuple[list[float], float, int]:
    """Feed fresh events at ``rate`` until the pass is done (+3 s) or ``seconds``; latencies, pass time, WAL peak."""
    settings = load_settings(None, store={"path": str(db)})
    store = await Store.open(settings.store)
    if prune:
        store.upkeep.retain(RetentionSettings(history_days=30, interval=3600), first_pass_after=1.0)
    session = MonitorSession(settings, store)
    client = session.client
    open_stream(client)
    samples: list[tuple[float, float]] = []
    store.track_arrivals = True
    started = RUN_STARTED[0] = time.perf_counter()
    store.on_commit.append(
        lambda commit: samples.extend((t - started, commit.committed_at - t) for t in commit.arrivals)
    )
    factory = EventFactory(EmulatorOptions(kinds=("activity",), seed=2))
    pass_time = 0.0
    sent = 0
    while True:
        elapsed = time.perf_counter() - started
        if seconds is not None and elapsed >= seconds:
            break
        if prune and store.upkeep.passes and not pass_time:
            pass_time = elapsed - 1.0
        if seconds is None and prune and pass_time and elapsed > pass_time + 3:
            break
        if seconds is None and not prune and elapsed > 120:
            break
        due = int(elapsed * rate)
        while sent + batch <= due:
            body = [factory.valid("demo", utc_ts(time.time()))[2] for _ in range(batch)]
            client.data_received(message_xml("monitor.localhost", "agent@localhost/xmppmon", f"m{sent}", body).encode())
            sent += batch
        store.upkeep.checkpointer.wal_size()  # keeps the peak
        await asyncio.sleep(batch / rate / 2)
    await store.barrier()
    await store.close()
    wal_peak = store.upkeep.checkpointer.wal_peak
    # The first half second is the start-up (cache warm-up, first commit): left out of both runs.
    return [lat for at, lat in samples if at >= 0.5], pass_time, wal_peak


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=int, default=1_000_000, help="rows for the pass to delete")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--batch", type=int, default=5, help="events per stanza")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=None, help="fixed run length (default: the pass's + 3 s)")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    rows = []
    with tempfile.TemporaryDirectory(prefix="xmppmon-prune-") as tmp:
        base = Path(tmp) / "base.db"
        t = time.monotonic()
        await fill(base, args.old)
        print(f"filled {args.old} old rows in {time.monotonic() - t:.0f} s ({base.stat().st_size / 1e6:.0f} MB)")
        for n in range(args.rounds):
            for name in ("pass.db", "none.db"):
                for old in Path(tmp).glob(f"{name}*"):
                    old.unlink()
                shutil.copy(base, Path(tmp) / name)
            with_pass, pass_time, wal_pass = await stream(
                Path(tmp) / "pass.db", args.rate, args.batch, args.seconds, prune=True
            )
            conn = sqlite3.connect(Path(tmp) / "pass.db")
            left = conn.execute("SELECT count(*) FROM events WHERE event_id LIKE 'old-%'").fetchone()[0]
            conn.close()
            size = (Path(tmp) / "pass.db").stat().st_size
            length = args.seconds if args.seconds is not None else pass_time + 3
            without, _, wal_none = await stream(Path(tmp) / "none.db", args.rate, args.batch, length, prune=False)
            p99 = [percentile(s, 0.99) * 1000 for s in (without, with_pass)]
            rows.append((n + 1, args.old - left, pass_time, size, p99, [statistics.median(s) * 1000 for s in (without, with_pass)],
                         [max(s) * 1000 for s in (without, with_pass)], (wal_none, wal_pass), len(without)))  # fmt: skip
    print(
        f"\n{args.rate:.0f} events/s, {args.batch} per stanza; latency arrival -> commit in ms (no pass | prune pass)"
    )
    print(
        f"{'round':>5} {'deleted':>8} {'pass s':>7} {'file MB':>8} {'p50':>13} {'p99':>13} {'max':>13} {'WAL peak MB':>13} {'p99 ratio':>9}"
    )
    for n, deleted, pass_time, size, p99, p50, worst, wal, _stanzas in rows:
        print(
            f"{n:>5} {deleted:>8} {pass_time:>7.1f} {size / 1e6:>8.1f} {p50[0]:>6.1f} {p50[1]:>6.1f} {p99[0]:>6.1f} {p99[1]:>6.1f}"
            f" {worst[0]:>6.0f} {worst[1]:>6.0f} {wal[0] / 1e6:>6.1f} {wal[1] / 1e6:>6.1f} {p99[1] / p99[0]:>9.2f}"
        )
    ratios = sorted(r[4][1] / r[4][0] for r in rows)
    p99_pass = sorted(r[4][1] for r in rows)
    print(
        f"median p99 ratio {ratios[len(ratios) // 2]:.2f}, median p99 with the pass {p99_pass[len(p99_pass) // 2]:.1f} ms"
        "  (target: ratio <= 2 and <= 25 ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
