"""A history export of 1 million events to Azurite, downloaded back and compared row for row; time and peak memory.

Usage: .venv/bin/python bench/export_azure.py [--events 1000000] [--block-mb 4]
Starts a private Azurite (make azurite) on a free loopback port and a database in a temporary
directory, runs ``xmppmon export create --history event --dest URL`` as its own process (the SAS
token in its environment) and reads that process's peak RSS (VmHWM, through a wrapper that runs
the CLI in-process). Then it downloads the blob and compares it with the database, streaming both.
Next to it, the same export to a local folder, as the ratio's baseline.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from agent.lab.azurite import AzuriteServer  # noqa: E402
from agent.store.schema import MIGRATIONS  # noqa: E402

PROBE = """
import sys
from agent.cli import main
code = main(sys.argv[1:])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("peak_kb", line.split()[1], file=sys.stderr)
sys.exit(code)
"""


def make_db(path: Path, events: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    for version, name, script in MIGRATIONS:
        conn.executescript(script)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, '2024-05-01T00:00:00.000Z')", (version, name))
    payload = '{"device_id":"d-%07d","name":"screen_view","extras":{"screen":"home","ms":%d}}'
    with conn:
        conn.executemany(
            "INSERT INTO events (event_id, app, kind, ts, payload, received_at) VALUES (?, 'demo', 'event', ?, ?, ?)",
            ((f"ev-{i:07d}", f"2024-05-01T{i // 3_600_000:02d}:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
              payload % (i, i), "2024-05-01T12:00:00.000Z") for i in range(events)),
        )  # fmt: skip
    conn.close()


def export(db: Path, dest: str, env: dict[str, str]) -> tuple[float, float, str]:
    args = ["export", "create", "--history", "event", "--from", "2024-05-01", "--to", "2024-05-02",
            "--dest", dest, "--database", str(db)]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"export failed: {done.stderr.strip().splitlines()[-1:]}")
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("peak_kb"))
    return seconds, peak / 1024, done.stdout.strip()


def compare(db: Path, jsonl_gz: Path) -> int:
    """Row for row, streaming both sides; returns the row count."""
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT event_id, app, kind, ts, received_at, payload FROM events ORDER BY ts, event_id")
    n = 0
    with gzip.open(jsonl_gz, "rb") as lines:
        for line, row in zip(lines, rows, strict=True):
            got = orjson.loads(line)
            want = dict(zip(("event_id", "app", "kind", "ts", "received_at"), row[:5], strict=True))
            want["payload"] = orjson.loads(row[5])
            if got != want:
                raise SystemExit(f"row {n} differs: {got} != {want}")
            n += 1
    conn.close()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--block-mb", type=float, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xmppmon-bench-azure-") as tmp, AzuriteServer(Path(tmp) / "azurite") as az:
        work = Path(tmp)
        db = work / "m.db"
        make_db(db, args.events)
        az.create_container("bench")
        env = {k: v for k, v in os.environ.items() if not k.startswith("XMPPMON_")}
        env |= {"XMPPMON_AZURE__SAS": az.sas("bench"), "XMPPMON_AZURE__BLOCK_SIZE": str(int(args.block_mb * 2**20)),
                "XMPPMON_EXPORT__DIR": str(work / "exports")}  # fmt: skip
        local_s, local_mb, _ = export(db, str(work / "folder"), env)
        azure_s, azure_mb, line = export(db, az.container_url("bench"), env)
        started = time.monotonic()
        blob = work / "downloaded.jsonl.gz"
        blob.write_bytes(az.download("bench", "history/event/2/part-00000.jsonl.gz"))
        rows = compare(db, blob)
        check_s = time.monotonic() - started
        print(line)
        print(f"{'export of ' + format(args.events, ',') + ' events':<40} {'seconds':>8} {'peak RSS MB':>12}")
        print(f"{'to a local folder':<40} {local_s:>8.1f} {local_mb:>12.1f}")
        print(f"{'to Azurite (spool + staged blocks)':<40} {azure_s:>8.1f} {azure_mb:>12.1f}")
        print(f"Azurite / folder time ratio: {azure_s / local_s:.2f}; blob {blob.stat().st_size / 1e6:.1f} MB")
        print(f"downloaded back and compared: {rows:,} rows identical ({check_s:.1f} s)")


if __name__ == "__main__":
    main()
