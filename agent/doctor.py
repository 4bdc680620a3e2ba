"""``xmppmon doctor``: check the configuration and the database without side effects.

Each check is one line, ``ok``, ``warn`` or ``FAIL``, and the command fails if any check fails.
Nothing is sent: the only network traffic is the DNS lookup of the server's address (no TCP
connection, no events, no alerts), and the database is opened read-only.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.config import Settings, load_settings
from agent.exceptions import XmppmonError
from agent.store import connect_readonly
from agent.store.readers import quick_check, schema_version
from agent.store.schema import SCHEMA_VERSION


@dataclass
class Check:
    name: str
    status: str  # ok, warn, FAIL
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name:<12} {self.detail}"


def _private(path: Path, what: str, name: str) -> Check:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007:
        return Check(name, "FAIL", f"{what} {path} is accessible to other users (mode {mode:04o}):"
                     f" chmod o-rwx {path}")  # fmt: skip
    return Check(name, "ok", f"{what} {path} mode {mode:04o}")


def check_database(settings: Settings) -> Iterator[Check]:
    path = settings.store.path
    if not path.exists():
        parent = path.parent if str(path.parent) else Path(".")
        if os.access(parent, os.W_OK):
            yield Check("database", "warn", f"{path} does not exist yet: the agent creates it on start")
        else:
            yield Check("database", "FAIL", f"{path} does not exist and {parent} is not writable")
        return
    try:
        conn = connect_readonly(path)
    except XmppmonError as exc:
        yield Check("database", "FAIL", str(exc))
        return
    try:
        result = quick_check(conn)
        if result == ["ok"]:
            yield Check("database", "ok", f"{path} opens and passes PRAGMA quick_check")
        else:
            yield Check("database", "FAIL", f"{path} fails PRAGMA quick_check: {'; '.join(result[:3])}")
        version = schema_version(conn)
        if version == SCHEMA_VERSION:
            yield Check("schema", "ok", f"version {version}")
        elif version < SCHEMA_VERSION:
            yield Check("schema", "warn", f"version {version}; the agent migrates it to {SCHEMA_VERSION} on start")
        else:
            yield Check(
                "schema", "FAIL", f"version {version} is newer than this xmppmon ({SCHEMA_VERSION}): upgrade xmppmon"
            )
    except sqlite3.Error as exc:
        yield Check("database", "FAIL", f"{path} cannot be read: {exc}")
    finally:
        conn.close()
    for suffix in ("", "-wal", "-shm"):
        file = Path(f"{path}{suffix}")
        if file.exists():
            yield _private(file, "database", "permissions")


def check_files(settings: Settings, config_file: Path | None) -> Iterator[Check]:
    if config_file is not None:
        yield _private(config_file, "configuration", "permissions")
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        names = sorted(p.name for p in Path(credentials).iterdir())
        yield Check("credentials", "ok", f"{credentials}: {', '.join(names) or 'empty'}")
    ca = settings.xmpp.ca_file
    if ca is None:
        yield Check("ca-file", "ok", "not set: the system's CAs verify the server")
        return
    try:
        ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        yield Check("ca-file", "FAIL", f"{ca} is not a readable PEM CA certificate: {exc}")
    else:
        yield Check("ca-file", "ok", f"{ca} is a readable PEM certificate")


def check_dns(settings: Settings) -> Check:
    host = settings.xmpp.host or settings.xmpp.jid.split("@", 1)[1].split("/", 1)[0]
    try:
        infos = socket.getaddrinfo(host, settings.xmpp.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return Check("server", "FAIL", f"{host} does not resolve: {exc}")
    addresses = sorted({str(info[4][0]) for info in infos})
    return Check("server", "ok", f"{host}:{settings.xmpp.port} resolves to {', '.join(addresses[:4])}")


def run_checks(config_file: str | None, database: str | None = None) -> list[Check]:
    """Every check, in order; stops after the configuration if it cannot be loaded."""
    path = (
        Path(config_file)
        if config_file
        else (Path(os.environ["XMPPMON_CONFIG"]) if os.environ.get("XMPPMON_CONFIG") else None)
    )
    try:
        settings = load_settings(config_file)
    except XmppmonError as exc:
        return [Check("config", "FAIL", str(exc))]
    if database:
        settings.store.path = Path(database)
    apps = len(settings.monitor.apps)
    checks = [Check("config", "ok" if apps else "warn",
                    f"{settings.xmpp.jid} -> {settings.monitor.jid}, {apps} app(s)"
                    + ("" if apps else ": no apps to subscribe (XMPPMON_MONITOR__APPS)"))]  # fmt: skip
    if not settings.xmpp.password.get_secret_value():
        checks.append(Check("config", "FAIL", "no password: set xmpp__password in the credentials directory"))
    checks += check_database(settings)
    checks += check_files(settings, path)
    checks.append(check_dns(settings))
    return checks
