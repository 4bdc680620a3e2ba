"""Every benchmark in one go (what `make bench` runs); each part prints its own table.

Usage: .venv/bin/python bench/all.py [--quick] [--idle-seconds 600]
About 15 minutes with the default 10-minute idle measurement. All traffic stays on 127.0.0.1;
every part starts and stops its own servers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def part(title: str, *args: str) -> None:
    print(f"\n=== {title} ===", flush=True)
    started = time.monotonic()
    result = subprocess.run([sys.executable, *args], cwd=HERE.parent, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    print("\n".join(lines[-12:]))
    if result.returncode != 0:
        print(f"FAILED (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}")
    print(f"({time.monotonic() - started:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts and a 60 s idle period")
    parser.add_argument("--idle-seconds", type=float, default=600)
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    idle = 60 if args.quick else args.idle_seconds
    part("End to end through Prosody, against a bare slixmpp receiver (ceiling ratio)", "bench/run.py", *quick)
    part("The agent alone: stream bytes to committed rows; SQLite ceiling; naive script", "bench/pipeline.py",
         "--events", "50000" if args.quick else "200000")  # fmt: skip
    part("Latency, arrival to commit, through Prosody", "bench/latency.py", "--seconds", "5" if args.quick else "10")
    part("Memory (RSS)", "bench/memory.py", "--events", "1000000" if args.quick else "5000000")
    part("Sidecar: webhook batches to a local receiver", "bench/bench_sidecar.py")
    part(f"Idle cost over {idle:.0f} s with the default keepalive", "bench/idle.py", "--seconds", str(idle))


if __name__ == "__main__":
    main()
