"""A history export of a million events runs in constant memory."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agent.config import StoreSettings
from agent.export import create_job
from agent.store import Store

ROWS = 1_000_000
MAX_GROWTH_MB = 50

PROBE = """
import sys
from pathlib import Path
from agent.export import run_job

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

before = hwm_kb()
job = run_job(Path(sys.argv[1]), int(sys.argv[2]))
print(job.rows, (hwm_kb() - before) / 1024)
"""


async def test_million_event_export_has_constant_memory(tmp_path: Path) -> None:
    """Exporting 1,000,000 events (~120 MB of JSON) grows the exporter's peak RSS by under 50 MB."""
    db = tmp_path / "big.db"
    store = await Store.open(StoreSettings(path=db))
    await store.close()
    payload = '{"device_id":"d-%07d","name":"screen_view","extras":{"screen":"home","ms":%d}}'
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO events (event_id, app, kind, ts, payload, received_at) VALUES (?, 'demo', 'event', ?, ?, ?)",
            ((f"ev-{i:07d}", f"2024-05-01T{i // 3_600_000:02d}:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
              payload % (i, i), "2024-05-01T12:00:00.000Z") for i in range(ROWS)),
        )  # fmt: skip
    conn.close()
    job_id = create_job(db, "history", "event", tmp_path / "out", from_ts="2024-05-01T00:00:00.000Z",
                        to_ts="2024-05-02T00:00:00.000Z")  # fmt: skip
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", PROBE, str(db), str(job_id)], capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows, growth_mb = result.stdout.split()
    print(f"exported {rows} rows in {time.monotonic() - started:.1f} s, peak RSS growth {float(growth_mb):.1f} MB")
    assert int(rows) == ROWS
    assert float(growth_mb) < MAX_GROWTH_MB
