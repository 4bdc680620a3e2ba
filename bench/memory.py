"""The agent's RSS after start, after 1 million and after 5 million events.

Usage: .venv/bin/python bench/memory.py [--events 5000000] [--batch 50]
Feeds the exact bytes a server would send (generated lazily, so the generator holds almost
nothing) into the agent's real client and store, as bench/pipeline.py does, and reads VmRSS.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402

from agent.config import load_settings  # noqa: E402
from agent.lab.emulator import EmulatorOptions  # noqa: E402
from agent.lab.emulator.wire import EventFactory, message_xml, utc_ts  # noqa: E402
from agent.session import MonitorSession  # noqa: E402
from agent.store import Store  # noqa: E402
from bench.feed import open_stream  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def chunks(events: int, batch: int) -> Iterator[tuple[int, bytes]]:
    """(events so far, ~64 KiB of stream) pairs, made on demand."""
    factory = EventFactory(EmulatorOptions(kinds=("activity",), seed=2))
    n, buffer, size = 0, [], 0
    ts = utc_ts(time.time())
    while n < events:
        if n % 10_000 == 0:
            ts = utc_ts(time.time())
        body = [factory.valid("demo", ts)[2] for _ in range(batch)]
        n += batch
        data = message_xml("monitor.localhost", "agent@localhost/xmppmon", f"m{n}", body).encode()
        buffer.append(data)
        size += len(data)
        if size >= 65536:
            yield n, b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield n, b"".join(buffer)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    logger.remove()
    with tempfile.TemporaryDirectory(prefix="xmppmon-memory-") as tmp:
        settings = load_settings(None, store={"path": str(Path(tmp) / "m.db")})
        store = await Store.open(settings.store)
        session = MonitorSession(settings, store)
        client = session.client
        open_stream(client)
        await store.barrier()
        marks = {1_000_000: None, args.events: None}
        start_rss = rss_mb()
        started = time.perf_counter()
        for n, chunk in chunks(args.events, args.batch):
            client.data_received(chunk)
            if store.pending > 20_000:  # as the socket's flow control would: let the writer catch up
                await store.barrier()
            else:
                await asyncio.sleep(0)
            for mark in marks:
                if marks[mark] is None and n >= mark:
                    await store.barrier()
                    marks[mark] = rss_mb()
        await store.barrier()
        elapsed = time.perf_counter() - started
        await store.close()
    print(f"\nRSS after start: {start_rss:.1f} MB")
    for mark, rss in marks.items():
        print(f"RSS after {mark:,} events: {rss:.1f} MB")
    growth = (marks[args.events] - marks[1_000_000]) / marks[1_000_000] * 100  # type: ignore[operator]
    print(f"growth from 1M to {args.events / 1e6:g}M: {growth:+.1f} %  ({args.events / elapsed:,.0f} events/s overall)")


if __name__ == "__main__":
    asyncio.run(main())
