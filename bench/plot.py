"""docs/performance.png: the agent's events/s against events per stanza (bench/pipeline.py's path).

Usage: .venv/bin/python bench/plot.py [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pipeline  # noqa: E402
from loguru import logger  # noqa: E402

BATCHES = (1, 2, 5, 10, 20, 50, 100)


async def measure(events: int) -> list[tuple[int, float]]:
    points = []
    with tempfile.TemporaryDirectory(prefix="xmppmon-plot-") as tmp:
        for batch in BATCHES:
            chunks, total = pipeline.make_stream(events, batch)
            rate = await pipeline.agent_rate(Path(tmp) / f"b{batch}.db", chunks, total)
            points.append((batch, rate))
            print(f"{batch:>4} events/stanza: {rate:,.0f} events/s", flush=True)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.png"))
    args = parser.parse_args()
    logger.remove()
    points = asyncio.run(measure(args.events))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot([b for b, _ in points], [r / 1000 for _, r in points], marker="o")
    ax.set_xscale("log")
    ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
    ax.set_xlabel("events per stanza")
    ax.set_ylabel("thousand events/s committed")
    ax.set_title("xmppmon agent, stream bytes to committed rows (no server)", fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
