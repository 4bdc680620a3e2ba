"""What a private server costs the test suite: first start, restart, graceful stop, kill, per server.

Usage: .venv/bin/python bench/lab_servers.py [--rounds 3]
Prints the median seconds of each step for Prosody and ejabberd, and ejabberd's ratio to Prosody
(measured in the same run, so the machine's load weighs on both). Each private-server test pays a
first start and a stop; the suite's shared servers pay it once.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from agent.lab.servers import SERVER_KINDS, make_server

STEPS = ("first start", "restart", "stop", "kill")


def measure(kind: str, workdir: Path) -> dict[str, float]:
    server = make_server(kind, workdir)
    times: dict[str, float] = {}
    try:
        for step, action in (
            ("first start", server.start),
            ("stop", server.stop),
            ("restart", server.start),
            ("kill", server.kill),
        ):
            started = time.monotonic()
            action()
            times[step] = time.monotonic() - started
    finally:
        server.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in SERVER_KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            for kind in SERVER_KINDS:  # interleaved, so load changes hit both alike
                runs[kind].append(measure(kind, Path(tmp) / f"{kind}{n}"))
    median = {kind: {s: statistics.median(r[s] for r in runs[kind]) for s in STEPS} for kind in SERVER_KINDS}
    print(f"| step ({args.rounds} rounds, median s) | " + " | ".join(SERVER_KINDS) + " | ejabberd / prosody |")
    print("|---|" + "---:|" * (len(SERVER_KINDS) + 1))
    for step in STEPS:
        cells = " | ".join(f"{median[kind][step]:.2f}" for kind in SERVER_KINDS)
        print(f"| {step} | {cells} | {median['ejabberd'][step] / median['prosody'][step]:.1f}x |")


if __name__ == "__main__":
    main()
