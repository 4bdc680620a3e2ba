"""A deployment to look at: Prosody, a real ``xmppmon run`` and ``xmppmon sidecar`` with their metrics
listeners, two webhook sinks (one accepts, one answers 400: dead letters), and emulator waves.

Shared by the tests of what operators look at (Prometheus, ``xmppmon top``, Datasette); each test
module starts its own with :func:`deployment` and everything is stopped, by PID, at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from agent.lab.net import free_loopback_port
from agent.lab.prosody import ProsodyServer

from .conftest import agent_env, agent_state, new_account

HISTORY_KINDS = ("activity", "crash", "error", "event", "job")


def require(binary: str, package: str) -> str:
    """The path of ``binary``; fails (never skips) when the Debian package that has it is missing."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: the Makefile's DEBS installs Debian's {package} (make test)")
    return path


def poll_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "", every: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(every)


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """All rows of one read-only query ([] while the database does not exist yet)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


@dataclass
class Deployment:
    dir: Path
    server: ProsodyServer
    account: tuple[str, str]
    db: Path
    agent_port: int
    sidecar_port: int
    webhook: HTTPServer
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)

    def spawn(self, argv: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        with (self.dir / log).open("ab") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.dir / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def wave(self, count: int, seed: int) -> dict[str, int]:
        """Send ``count`` valid events (5 % malformed and 5 % duplicates besides) and wait until all landed."""
        env = {**os.environ, "XMPPMON_EMULATOR_SECRET": self.server.component_secret}
        args = [
            sys.executable, "-m", "agent", "emulate", "--port", str(self.server.component_port),
            "--jid", self.server.component, "--to", self.account[0], "--count", str(count), "--batch", "10",
            "--malformed", "0.05", "--duplicates", "0.05", "--seed", str(seed), "--log-level", "WARNING",
            "--event-log", str(self.dir / "sent.log"), "--json",
        ]  # fmt: skip
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=True)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        for key in ("events_sent", "duplicates_sent", "malformed_sent"):
            self.sent[key] = self.sent.get(key, 0) + int(report[key])
        received = self.sent["events_sent"] + self.sent["duplicates_sent"]
        poll_until(
            lambda: rows(self.db, "SELECT value FROM counters WHERE name = 'events_received'") == [(received,)],
            timeout=60, what=f"{received} events received",
        )  # fmt: skip
        poll_until(
            lambda: rows(self.db, "SELECT count(*) FROM quarantine") == [(self.sent["malformed_sent"],)],
            timeout=30, what="every malformed event quarantined",
        )  # fmt: skip
        return report

    def held(self) -> dict[str, int]:
        """Rows per kind that the database holds in its append tables (history kinds and api)."""
        kinds = dict(rows(self.db, "SELECT kind, count(*) FROM events GROUP BY kind"))
        kinds["api"] = rows(self.db, "SELECT count(*) FROM api_calls")[0][0]
        return kinds


@contextlib.contextmanager
def deployment(server: ProsodyServer, workdir: Path, **agent_extra: str) -> Iterator[Deployment]:
    """Agent and sidecar processes with metrics listeners, connected and relaying; stopped at the end."""
    workdir.mkdir(parents=True, exist_ok=True)
    with HTTPServer(host="127.0.0.1") as webhook:
        webhook.expect_request("/ok").respond_with_json({"ok": True})
        webhook.expect_request("/broken").respond_with_json({"error": "bad item"}, status=400)
        d = Deployment(
            workdir, server, new_account(server), workdir / "monitor.db", free_loopback_port(), free_loopback_port(),
            webhook,
        )  # fmt: skip
        env = agent_env(
            server, d.db, d.account, XMPPMON_METRICS__LISTEN=f"127.0.0.1:{d.agent_port}",
            XMPPMON_KEEPALIVE__INTERVAL="0.5", **agent_extra,
        )  # fmt: skip
        sinks = [
            {"type": "webhook", "name": "hook", "url": webhook.url_for("/ok")},
            {"type": "webhook", "name": "broken", "url": webhook.url_for("/broken"), "attempts": 1},
        ]
        sidecar_env = env | {
            "XMPPMON_SIDECAR__SINKS": json.dumps(sinks),
            "XMPPMON_SIDECAR__POLL_SECONDS": "0.2",
            "XMPPMON_SIDECAR__METRICS_LISTEN": f"127.0.0.1:{d.sidecar_port}",
        }
        try:
            d.spawn([sys.executable, "-m", "agent", "run"], env, "agent.log")
            poll_until(lambda: (agent_state(d.db, "session") or "").startswith("connected"), 30, "agent connected")
            d.spawn([sys.executable, "-m", "agent", "sidecar"], sidecar_env, "sidecar.log")
            yield d
        finally:
            for proc in d.procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in d.procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
