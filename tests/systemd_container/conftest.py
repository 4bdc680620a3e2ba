"""Fixtures for the tests under a real systemd: one booted container per run, xmppmon installed in it
with ``make install``, Prosody and the emulated Monitor API on the host's loopback.

The container shares the host's network, so the agent inside reaches the session's Prosody on
127.0.0.1 and the sidecar a webhook served by pytest-httpserver. Each test starts from a clean
slate (:func:`service`): no xmppmon unit running, no database, no drop-in, only the installed files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.lab.prosody import ProsodyServer

from ..conftest import new_account
from .container import CACHE, Container, Result, ensure_rootfs, missing_tools

ROOT = Path(__file__).resolve().parents[2]
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CACHE = CACHE / "pip"
SRC = "/srv/xmppmon"  # the copy of the source tree, where `make install` runs
CONF = "/etc/xmppmon"
UNITS = ("xmppmon-agent.service", "xmppmon-sidecar.service", "xmppmon-agent@*.service")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail loudly (never skip) when what the container tests need is missing; run uninstall last."""
    if not any(item.get_closest_marker("systemd_container") for item in items):
        return
    # make uninstall takes away what every other test uses: last, so nothing has to reinstall after it
    # (the host fixture would, see ensure_installed).
    items.sort(key=lambda item: item.path.name == "test_install_container.py")
    missing = missing_tools()
    if missing:
        raise pytest.UsageError(
            f"{', '.join(missing)} missing: run make test, which installs systemd-container and debootstrap"
        )
    if os.geteuid() != 0:
        raise pytest.UsageError("the systemd container tests boot a container with systemd-nspawn: run them as root")


def copy_source(target: Path) -> Path:
    """The source tree as git sees it (tracked and new files, not ignored ones), for `make install` inside."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / os.fsdecode(name)
        if source.is_file():  # deleted but still in the index: skip
            (target / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / os.fsdecode(name))
    return target


@pytest.fixture(scope="session")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A booted Debian 12 container with xmppmon installed by ``make install``; checked empty after stop."""
    work = tmp_path_factory.mktemp("container")
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    box = Container(
        ensure_rootfs(),
        work,
        binds=[
            (copy_source(work / "src"), SRC, False),
            (HOST_CA, "/srv/host-ca.pem", True),
            # pip's cache outlives the container where PyPI's answers are cacheable; on the machine this
            # was written on pip cached none of them (measured), so each run downloads again.
            (PIP_CACHE, "/root/.cache/pip", False),
        ],
    )
    box.boot()
    try:
        ensure_installed(box)
        yield box
    finally:
        box.stop()
        assert not box.forced, f"the container did not stop cleanly: {box.forced}"
        left = box.leftovers()
        assert not left, f"the container left {left} behind"


def install(box: Container) -> Result:
    """``make install`` in the container, as the README tells an operator (pip through the host's CA bundle)."""
    return box.run(["make", "-C", SRC, "install"], env={"PIP_CERT": "/srv/host-ca.pem", "HOME": "/root"}, timeout=600)


def ensure_installed(box: Container) -> None:
    """xmppmon installed by ``make install`` (once per container, or again after a test uninstalled it)."""
    if box.run(["test", "-x", "/usr/bin/xmppmon"]).returncode != 0:
        started = time.monotonic()
        install(box).check()
        print(f"make install in the container: {time.monotonic() - started:.1f} s")


@dataclass
class Host:
    """What the container's services talk to on the host: Prosody, and the emulator when started."""

    prosody: ProsodyServer
    container: Container
    emulators: list[subprocess.Popen[bytes]]
    logs: Path
    since: str = ""

    def emulator(self, *args: str) -> subprocess.Popen[bytes]:
        """``xmppmon emulate`` on the host (SIGTERMed at the end of the test); waits until it is connected."""
        log = self.logs / f"emulator-{len(self.emulators)}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("XMPPMON_")}
        env["XMPPMON_EMULATOR_SECRET"] = self.prosody.component_secret
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "emulate", "--jid", self.prosody.component,
                 "--port", str(self.prosody.component_port), *args],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )  # fmt: skip
        self.emulators.append(proc)
        poll(lambda: "connected to" in log.read_text() or proc.poll() is not None, 20, f"the emulator ({log})")
        assert proc.poll() is None, log.read_text()
        return proc

    def account(self, name: str = "agent", apps: list[dict[str, str]] | None = None, **toml: dict[str, Any]) -> str:
        """A fresh Prosody account, configured for ``xmppmon-agent`` (name ``agent``) or ``@name``.

        Writes ``/etc/xmppmon/NAME.toml`` and the credentials (in ``credentials/`` or ``credentials/NAME/``).
        Returns the JID.
        """
        jid, password = new_account(self.prosody)
        sections: dict[str, dict[str, Any]] = {
            "xmpp": {"jid": jid, "host": "127.0.0.1", "port": self.prosody.c2s_port, "ca_file": f"{CONF}/ca.pem",
                     "negotiation_timeout": 5},
            "monitor": {"jid": self.prosody.component},
            "keepalive": {"interval": 5, "timeout": 3},
            "reconnect": {"initial": 0.2, "maximum": 1.0},
            "store": {"heartbeat_seconds": 1, "flush_ms": 5},
        }  # fmt: skip
        for section, values in toml.items():
            sections.setdefault(section, {}).update(values)
        creds = f"{CONF}/credentials" + ("" if name == "agent" else f"/{name}")
        self.container.sh(f"install -d -m 0700 {creds}")
        self.put(f"{CONF}/ca.pem", self.prosody.ca_file.read_text(), "0644")
        self.put(f"{CONF}/{name}.toml", to_toml(sections), "0644")
        self.put(f"{creds}/xmpp__password", password, "0600")
        self.put(f"{creds}/monitor__apps", json.dumps(apps or [{"app": "demo", "key": "demo-key"}]), "0600")
        return jid

    def put(self, path: str, text: str, mode: str) -> None:
        self.container.run(
            ["sh", "-c", f'mkdir -p "$(dirname "$0")" && cat > "$0" && chmod {mode} "$0"', path], input=text, check=True
        )

    def journal(self, *args: str) -> str:
        """``journalctl`` output for this test only (entries after the last one when it started).

        ``--since``, not ``--after-cursor``: journalctl 252 returns nothing for ``--after-cursor`` combined
        with ``-p`` (measured in this container).
        """
        return self.container.run(["journalctl", "--no-pager", "-q", f"--since={self.since}", *args], check=True).stdout

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` properties of a unit."""
        args = ["systemctl", "show", unit, *(f"--property={p}" for p in properties)]
        out = self.container.run(args, check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def query(self, db: str, sql: str) -> list[dict[str, Any]]:
        """Rows from a database in the container, read as an operator would (``xmppmon query`` as root)."""
        result = self.container.run(["xmppmon", "query", "--database", db, "--json", sql])
        if result.returncode != 0:  # not created yet, or mid-migration
            return []
        return [json.loads(line) for line in result.stdout.splitlines()]

    def count(self, db: str, table: str) -> int:
        rows = self.query(db, f"SELECT count(*) AS n FROM {table}")
        return int(rows[0]["n"]) if rows else 0


def to_toml(sections: dict[str, dict[str, Any]]) -> str:
    """A TOML document from plain sections (strings, numbers, booleans; lists of tables not needed)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def poll(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """``predicate()`` once it is truthy; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def reset(box: Container) -> None:
    """Back to just-installed: every xmppmon unit stopped and forgotten, no state, drop-ins or configuration."""
    box.sh(
        "systemctl stop " + " ".join(f"'{u}'" for u in UNITS) + "; systemctl reset-failed; "
        "rm -rf /run/systemd/system/xmppmon-* /etc/systemd/system/xmppmon-*.d; systemctl daemon-reload; "
        "rm -rf /var/lib/private/xmppmon /var/lib/xmppmon; "
        f"rm -rf {CONF}/credentials/* {CONF}/ca.pem {CONF}/*.toml; cp {CONF}/agent.toml.example {CONF}/agent.toml",
        check=False,
    )


@pytest.fixture
def host(container: Container, prosody: ProsodyServer, tmp_path: Path) -> Iterator[Host]:
    """The container reset to just-installed, and the host side: Prosody, emulators to start."""
    ensure_installed(container)
    reset(container)
    last = int(
        json.loads(container.run(["journalctl", "-n", "1", "-o", "json"], check=True).stdout)["__REALTIME_TIMESTAMP"]
    )
    side = Host(prosody, container, [], tmp_path, since=f"@{(last + 1) // 10**6}.{(last + 1) % 10**6:06d}")
    try:
        yield side
    finally:
        reset(container)
        for proc in side.emulators:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
