"""End-to-end throughput: emulator -> Prosody -> agent -> committed rows, against a bare receiver.

Run with `make bench` (or `.venv/bin/python bench/run.py [--quick]`). Everything runs on
127.0.0.1 in a temporary directory, in separate processes as in production, and stops by itself.
Prints a table; figures are only comparable within one run (shared, noisy machines).
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.lab.prosody import ProsodyServer  # noqa: E402

PY = sys.executable


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def emulate(server: ProsodyServer, to: str, count: int, batch: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PY, "-m", "agent", "emulate", "--port", str(server.component_port), "--to", to,
         "--count", str(count), "--batch", str(batch), "--rate", "0", "--kinds", "activity",
         "--log-level", "WARNING"],
        env=os.environ | {"XMPPMON_EMULATOR_SECRET": server.component_secret},
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def bare(server: ProsodyServer, jid: str, password: str, count: int, batch: int) -> float:
    """Events/s that a receiver doing nothing but count stanzas sees."""
    stanzas = count // batch
    receiver = subprocess.Popen(
        [PY, str(ROOT / "bench" / "bare_receiver.py"), jid, password, str(server.c2s_port),
         str(server.ca_file), str(stanzas)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "ready"
    emu = emulate(server, jid, count, batch)
    line = receiver.stdout.readline().split()
    receiver.wait(30)
    emu.wait(30)
    assert line[0] == "done", line
    # From the first stanza's arrival to the last's, as the agent's figure below.
    return count / float(line[2])


def agent_run(
    server: ProsodyServer, workdir: Path, jid: str, password: str, count: int, batch: int
) -> dict[str, float]:
    db = workdir / f"agent-{batch}.db"
    env = os.environ | {
        "XMPPMON_XMPP__JID": jid, "XMPPMON_XMPP__PASSWORD": password,
        "XMPPMON_XMPP__HOST": "127.0.0.1", "XMPPMON_XMPP__PORT": str(server.c2s_port),
        "XMPPMON_XMPP__CA_FILE": str(server.ca_file), "XMPPMON_MONITOR__JID": server.component,
        "XMPPMON_STORE__PATH": str(db), "XMPPMON_LOG__LEVEL": "WARNING",
    }  # fmt: skip
    agent = subprocess.Popen([PY, "-m", "agent", "run"], env=env)
    try:
        deadline = time.monotonic() + 30
        while _value(db, "SELECT value FROM agent_state WHERE key='session'") != "connected":
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError("agent did not connect")
            time.sleep(0.05)
        rss_start = rss_mb(agent.pid)
        started = time.perf_counter()
        emu = emulate(server, jid, count, batch)
        while (_value(db, "SELECT count(*) FROM events") or 0) < count:
            if time.perf_counter() - started > 600:
                raise RuntimeError("agent did not store every event in 600 s")
            time.sleep(0.02)
        done = time.time()
        emu.wait(30)
        # From the first event's arrival (its received_at) to every event committed, so that
        # process start-up and connection time count neither here nor for the bare receiver.
        first = _value(db, "SELECT min(received_at) FROM events")
        assert isinstance(first, str)
        elapsed = done - datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp()
        rss_end = rss_mb(agent.pid)
        stored = _value(db, "SELECT count(DISTINCT event_id) FROM events")
        return {"rate": count / elapsed, "stored": stored, "rss_start": rss_start, "rss_end": rss_end}
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)


def _value(db: Path, sql: str) -> object:
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            row = conn.execute(sql).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    cases = [(1, int(20_000 * scale)), (50, int(300_000 * scale))]
    with tempfile.TemporaryDirectory(prefix="xmppmon-bench-") as tmp:
        workdir = Path(tmp)
        server = ProsodyServer(workdir / "prosody")
        server.start()
        try:
            rows = []
            for batch, count in cases:
                jid_b = server.register(f"bare{batch}", "pw")
                jid_a = server.register(f"agent{batch}", "pw")
                ceiling = bare(server, jid_b, "pw", count, batch)
                result = agent_run(server, workdir, jid_a, "pw", count, batch)
                rows.append((batch, count, ceiling, result))
        finally:
            server.stop()
    print(f"\n{'events/stanza':>13} {'events':>8} {'bare recv ev/s':>15} {'agent ev/s':>11} {'ratio':>6} "
          f"{'stored':>8} {'RSS start MB':>12} {'RSS end MB':>10}")  # fmt: skip
    for batch, count, ceiling, r in rows:
        print(
            f"{batch:>13} {count:>8} {ceiling:>15,.0f} {r['rate']:>11,.0f} {r['rate'] / ceiling:>6.2f} "
            f"{r['stored']:>8} {r['rss_start']:>12.1f} {r['rss_end']:>10.1f}"
        )


if __name__ == "__main__":
    main()
