"""CPU used by an idle, connected agent with the default keepalive (240 s pings).

Usage: .venv/bin/python bench/idle.py [--seconds 600]
Starts a private Prosody and `xmppmon run` (nothing streamed), waits until it is connected, then
reads the agent's user+system CPU time from /proc over the period. Stops everything by itself.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.lab.prosody import ProsodyServer  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xmppmon-idle-") as tmp:
        server = ProsodyServer(Path(tmp) / "prosody")
        server.start()
        agent = None
        try:
            jid = server.register("idle", "pw")
            db = Path(tmp) / "idle.db"
            env = os.environ | {
                "XMPPMON_XMPP__JID": jid, "XMPPMON_XMPP__PASSWORD": "pw",
                "XMPPMON_XMPP__HOST": "127.0.0.1", "XMPPMON_XMPP__PORT": str(server.c2s_port),
                "XMPPMON_XMPP__CA_FILE": str(server.ca_file), "XMPPMON_STORE__PATH": str(db),
                "XMPPMON_MONITOR__JID": server.component,
            }  # fmt: skip
            agent = subprocess.Popen([sys.executable, "-m", "agent", "run"], env=env, stderr=subprocess.DEVNULL)
            while True:
                try:
                    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                    state = conn.execute("SELECT value FROM agent_state WHERE key='session'").fetchone()
                    conn.close()
                    if state and state[0].startswith("connected"):
                        break
                except sqlite3.Error:
                    pass
                time.sleep(0.2)
            time.sleep(2)  # let start-up settle
            before, started = cpu_seconds(agent.pid), time.monotonic()
            time.sleep(args.seconds)
            used = cpu_seconds(agent.pid) - before
            elapsed = time.monotonic() - started
            rss = next(
                int(line.split()[1]) / 1024
                for line in Path(f"/proc/{agent.pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
            print(
                f"idle agent: {used:.2f} CPU s over {elapsed:.0f} s ({100 * used / elapsed:.3f} % of a core), RSS {rss:.1f} MB"
            )
        finally:
            if agent is not None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(30)
            server.stop()


if __name__ == "__main__":
    main()
