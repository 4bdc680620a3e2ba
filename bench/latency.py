"""Arrival-to-commit latency of the agent at a given event rate, with a real Prosody.

Usage: .venv/bin/python bench/latency.py [--rates 1000,10000] [--seconds 10] [--batch 10]
The agent runs in this process (so the store can record when each stanza arrived and when its
events were committed); the emulator streams from a subprocess at each rate in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402

from agent.app import lifespan  # noqa: E402
from agent.config import load_settings  # noqa: E402
from agent.lab.prosody import ProsodyServer  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,10000")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batch", type=int, default=10)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    results = []
    with tempfile.TemporaryDirectory(prefix="xmppmon-latency-") as tmp:
        server = ProsodyServer(Path(tmp) / "prosody")
        server.start()
        try:
            jid = server.register("lat", "pw")
            settings = load_settings(None, xmpp={"jid": jid, "password": "pw", "host": "127.0.0.1",
                                                 "port": server.c2s_port, "ca_file": str(server.ca_file)},
                                     monitor={"jid": server.component}, store={"path": str(Path(tmp) / "l.db")})  # fmt: skip
            stop = asyncio.Event()
            async with lifespan(settings) as app:
                run = asyncio.ensure_future(app.session.run(stop))
                await asyncio.wait_for(app.session.connected.wait(), 30)
                # The store's documented commit hook: arrival-to-commit latency of every stanza.
                app.store.track_arrivals = True
                app.store.on_commit.append(
                    lambda commit: samples.extend(commit.committed_at - t for t in commit.arrivals)
                )
                samples: list[float] = []
                for rate in (float(r) for r in args.rates.split(",")):
                    samples.clear()
                    emu = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "agent", "emulate", "--port", str(server.component_port),
                        "--to", jid, "--rate", str(rate), "--batch", str(args.batch), "--kinds", "activity",
                        "--duration", str(args.seconds), "--log-level", "WARNING",
                        env=os.environ | {"XMPPMON_EMULATOR_SECRET": server.component_secret},
                        stdout=subprocess.DEVNULL,
                    )  # fmt: skip
                    await emu.wait()
                    await asyncio.sleep(1)
                    results.append((rate, len(samples), statistics.median(samples), percentile(samples, 0.99)))
                stop.set()
                await run
        finally:
            server.stop()
    print(f"\n{'events/s':>9} {'stanzas':>8} {'p50 ms':>8} {'p99 ms':>8}   (batch {args.batch}, store.flush_ms 10)")
    for rate, n, p50, p99 in results:
        print(f"{rate:>9.0f} {n:>8} {p50 * 1000:>8.1f} {p99 * 1000:>8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
