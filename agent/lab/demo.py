"""``xmppmon demo``: everything on 127.0.0.1 in a temporary directory, stopped cleanly at the end.

A private Prosody, the emulated Monitor API streaming every kind of event (with a few malformed
ones, duplicates, and API calls failing often enough to fire alerts), the agent as its own
``xmppmon run`` process and the sidecar as its own ``xmppmon sidecar`` process, exactly as systemd
would start them, relaying alerts to a small webhook receiver that prints what it gets. Progress is
printed every few seconds; at the end, ``xmppmon status``, ``xmppmon alerts`` and a sample query.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from agent.config import LogSettings
from agent.lab import emulator
from agent.lab.prosody import ProsodyServer, prosody_available
from agent.logs import setup_logging
from agent.store import connect_readonly

SAMPLE_QUERY = "SELECT kind, count(*) AS events FROM events GROUP BY kind ORDER BY 2 DESC"


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


class _Receiver(BaseHTTPRequestHandler):
    """The demo's webhook: prints each notification batch and confirms it (200)."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            messages = json.loads(body).get("messages", [])
        except ValueError:
            messages = []
        for m in messages:
            alert = m.get("alert", {})
            _say(
                f"webhook <- {m.get('transition')}: {alert.get('source')}/{alert.get('app')} code"
                f" {alert.get('code')} ({alert.get('meaning')}), count {alert.get('count')}"
            )
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def run_demo(args: argparse.Namespace) -> int:
    if not prosody_available():
        _say("Debian's prosody is not installed: run `make demo`, which installs it")
        return 1
    setup_logging(LogSettings(level="WARNING"))
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="xmppmon-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = ProsodyServer(workdir / "prosody")
    _say(f"starting a private Prosody in {workdir / 'prosody'}")
    server.start()
    agent: subprocess.Popen[bytes] | None = None
    sidecar: subprocess.Popen[bytes] | None = None
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        password = "demo-password"
        jid = server.register("agent", password)
        db = workdir / "monitor.db"
        env = os.environ | {
            "XMPPMON_XMPP__JID": jid,
            "XMPPMON_XMPP__PASSWORD": password,
            "XMPPMON_XMPP__HOST": "127.0.0.1",
            "XMPPMON_XMPP__PORT": str(server.c2s_port),
            "XMPPMON_XMPP__CA_FILE": str(server.ca_file),
            "XMPPMON_MONITOR__JID": server.component,
            "XMPPMON_MONITOR__APPS": '[{"app": "demo", "key": "demo-key"}]',
            "XMPPMON_KEEPALIVE__INTERVAL": "60",
            "XMPPMON_STORE__PATH": str(db),
        }
        _say(f"Prosody up on 127.0.0.1:{server.c2s_port}; starting the agent (xmppmon run) as {jid}")
        agent = subprocess.Popen([sys.executable, "-m", "agent", "run"], env=env)
        webhook = f"http://127.0.0.1:{receiver.server_address[1]}/alerts"
        _say(f"starting the sidecar (xmppmon sidecar), relaying alerts to the webhook {webhook}")
        sidecar_env = env | {"XMPPMON_SIDECAR__SINKS": json.dumps([{"type": "webhook", "url": webhook}])}
        sidecar = subprocess.Popen([sys.executable, "-m", "agent", "sidecar"], env=sidecar_env)
        options = emulator.EmulatorOptions(
            secret=server.component_secret, jid=server.component, port=server.component_port,
            rate=args.rate, batch=args.batch, duration=args.duration, malformed=0.01,
            duplicates=0.01, seed=1,
        )  # fmt: skip
        _say(
            f"emulated Monitor API streaming {args.rate:.0f} events/s, {args.batch} per stanza, "
            f"for {args.duration:.0f} s (Ctrl-C stops it)"
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_stream_and_report(options, db))
        time.sleep(2)  # the sidecar polls the outbox every second
        _say("stopping the agent and the sidecar (SIGTERM)")
        agent.send_signal(signal.SIGTERM)
        sidecar.send_signal(signal.SIGTERM)
        code = agent.wait(30)
        sidecar_code = sidecar.wait(30)
        agent = sidecar = None
        _say(f"agent exited with code {code}, sidecar with code {sidecar_code}\n")
        env_db = ["--database", str(db)]
        subprocess.run([sys.executable, "-m", "agent", "status", *env_db], check=False)
        print("\n$ xmppmon alerts", flush=True)
        subprocess.run([sys.executable, "-m", "agent", "alerts", *env_db], check=False, env=env)
        print(f"\n$ xmppmon query '{SAMPLE_QUERY}'", flush=True)
        subprocess.run([sys.executable, "-m", "agent", "query", SAMPLE_QUERY, *env_db], check=False)
        _say(f"the database stays at {db} (sqlite3 {db})")
        return 0 if code == 0 and sidecar_code == 0 else 1
    finally:
        for proc in (agent, sidecar):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        receiver.shutdown()
        receiver.server_close()
        server.stop()
        if not args.workdir:
            shutil.rmtree(workdir / "prosody", ignore_errors=True)


async def _stream_and_report(options: emulator.EmulatorOptions, db: Path) -> None:
    stop = asyncio.Event()
    task = asyncio.ensure_future(emulator.run(options, stop))
    try:
        while not task.done():
            await asyncio.wait([task], timeout=5)
            if not task.done():
                _progress(db)
        task.result()
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([task], timeout=5)
        raise
    _progress(db)


def _progress(db: Path) -> None:
    if not db.exists():
        _say("waiting for the agent's database")
        return
    try:
        conn = connect_readonly(db)
        try:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM api_calls),"
                " (SELECT count(*) FROM devices), (SELECT count(*) FROM quarantine),"
                " (SELECT value FROM agent_state WHERE key = 'session')"
            ).fetchone()
        finally:
            conn.close()
    except Exception as exc:
        _say(f"database not ready yet ({exc})")
        return
    _say(
        f"{time.strftime('%H:%M:%S')} session: {row[4]}; stored {row[0]} events, {row[1]} api calls,"
        f" {row[2]} devices; quarantined {row[3]}"
    )
