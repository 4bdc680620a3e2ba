"""Shared fixtures: real Prosody and ejabberd servers on loopback, agent accounts, settings, an in-process emulator."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from slixmpp import ClientXMPP
from slixmpp.xmlstream import ET

from agent.config import Settings, load_settings
from agent.lab import emulator
from agent.lab.ejabberd import EjabberdServer, ejabberd_available
from agent.lab.nats import nats_available
from agent.lab.prosody import ProsodyServer, prosody_available
from agent.lab.servers import SERVER_KINDS, XmppServer, make_server
from agent.store import connect_readonly

_accounts = itertools.count(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order and group the run for ``make test``'s two workers; fail loudly when a real server is missing.

    The chaos soak goes first, so that its minutes overlap the rest of the suite on the other worker;
    the systemd container tests share one booted container (a session fixture), so they stay together
    on one worker (``pytest-xdist``'s ``--dist loadgroup``). Without xdist both are harmless.
    """
    items.sort(key=lambda item: item.get_closest_marker("soak") is None)  # stable: the rest keeps its order
    for item in items:
        if item.get_closest_marker("systemd_container"):
            item.add_marker(pytest.mark.xdist_group("systemd_container"))
    if any(item.get_closest_marker("prosody") for item in items) and not prosody_available():
        raise pytest.UsageError(
            "Debian's prosody is not installed: run the README's test command (make test), which installs it"
        )
    if any(item.get_closest_marker("nats") for item in items) and not nats_available():
        raise pytest.UsageError(
            "Debian's nats-server is not installed: run the README's test command (make test), which installs it"
        )
    if any(item.get_closest_marker("ejabberd") for item in items) and not ejabberd_available():
        raise pytest.UsageError(
            "Debian's ejabberd (with erlang-p1-sqlite3) is not installed: run make test, which installs it"
        )


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """One private Prosody for the whole run, on free loopback ports."""
    with ProsodyServer(tmp_path_factory.mktemp("prosody")) as server:
        yield server


@pytest.fixture
def private_prosody(tmp_path: Path) -> Iterator[ProsodyServer]:
    """A Prosody of this test's own, for tests that freeze, kill or restart it."""
    with ProsodyServer(tmp_path / "prosody") as server:
        yield server


@pytest.fixture(scope="session")
def ejabberd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EjabberdServer]:
    """One private ejabberd (SQLite storage) for the whole run, on free loopback ports."""
    with EjabberdServer(tmp_path_factory.mktemp("ejabberd")) as server:
        yield server


@pytest.fixture
def private_ejabberd(tmp_path: Path) -> Iterator[EjabberdServer]:
    """An ejabberd of this test's own, for tests that freeze, kill or restart it."""
    with EjabberdServer(tmp_path / "ejabberd") as server:
        yield server


#: One parameter per server, marked so that a missing server fails the run (see above).
SERVER_PARAMS = [pytest.param(kind, marks=getattr(pytest.mark, kind), id=kind) for kind in SERVER_KINDS]


@pytest.fixture(scope="session", params=SERVER_PARAMS)
def xmpp_server(request: pytest.FixtureRequest) -> XmppServer:
    """The run's shared Prosody, then its shared ejabberd: a test using this runs against each."""
    server: XmppServer = request.getfixturevalue(request.param)
    return server


@pytest.fixture(params=SERVER_PARAMS)
def xmpp_server_kind(request: pytest.FixtureRequest) -> str:
    """The server kinds in turn (prosody, then ejabberd): for tests that build their own server with knobs (``make_server``)."""
    kind: str = request.param
    return kind


@pytest.fixture
def private_xmpp_server(xmpp_server_kind: str, request: pytest.FixtureRequest) -> XmppServer:
    """A server of this test's own (freeze, kill, restart), once a Prosody and once an ejabberd."""
    server: XmppServer = request.getfixturevalue(f"private_{xmpp_server_kind}")
    return server


@contextlib.contextmanager
def own_server(kind: str, workdir: Path, **knobs: Any) -> Iterator[XmppServer]:
    """A started server of *kind* with its own knobs (e.g. ``hibernation_time=2``), stopped afterwards."""
    server = make_server(kind, workdir, **knobs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def new_account(server: XmppServer) -> tuple[str, str]:
    """Register a fresh account, so tests never share offline queues or sessions."""
    n = next(_accounts)
    password = f"pw-{n}-secret"
    return server.register(f"agent{n}", password), password


def make_settings(server: XmppServer, db: Path, account: tuple[str, str], **sections: Any) -> Settings:
    """Agent settings pointing at ``server`` with quick timeouts, overridable per section."""
    base: dict[str, dict[str, Any]] = {
        "xmpp": {
            "jid": account[0],
            "password": account[1],
            "host": "127.0.0.1",
            "port": server.c2s_port,
            "ca_file": str(server.ca_file),
            "negotiation_timeout": 5,
        },
        "monitor": {"jid": server.component, "apps": [{"app": "demo", "key": "demo-key"}]},
        "keepalive": {"interval": 30, "timeout": 5},
        "reconnect": {"initial": 0.2, "maximum": 1.0, "stable_after": 5},
        "store": {"path": str(db), "flush_ms": 5, "heartbeat_seconds": 1},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_settings(None, **base)


def emulator_options(server: XmppServer, **options: Any) -> emulator.EmulatorOptions:
    return emulator.EmulatorOptions(
        secret=server.component_secret,
        jid=server.component,
        port=server.component_port,
        **options,
    )


@contextlib.asynccontextmanager
async def running(coro: Any) -> AsyncIterator[asyncio.Task[Any]]:
    """Run a coroutine as a task for the block; give it 10 s to end (stop was set), then cancel it."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        if not task.done():
            await asyncio.wait([task], timeout=10)
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.05)


async def archived(server: XmppServer, account: tuple[str, str]) -> int:
    """How many messages from the Monitor component the server has archived for *account* (XEP-0313).

    Asked through a second resource that sends no presence, so nothing is routed to it. Both servers
    answer an RSM ``<max>0</max>`` query with the count alone.
    """
    mam, rsm, data = "urn:xmpp:mam:2", "http://jabber.org/protocol/rsm", "jabber:x:data"
    client = ClientXMPP(f"{account[0]}/archive-probe", account[1])
    client.ca_certs = server.ca_file
    client.enable_direct_tls, client.enable_plaintext = False, False
    client.connect("127.0.0.1", server.c2s_port)
    try:
        await client.wait_until("session_start", 15)
        query = ET.Element(f"{{{mam}}}query")
        form = ET.SubElement(query, f"{{{data}}}x", {"type": "submit"})
        for var, value in (("FORM_TYPE", mam), ("with", server.component)):
            ET.SubElement(ET.SubElement(form, f"{{{data}}}field", {"var": var}), f"{{{data}}}value").text = value
        ET.SubElement(ET.SubElement(query, f"{{{rsm}}}set"), f"{{{rsm}}}max").text = "0"
        iq = client.Iq()
        iq["type"] = "set"
        iq.append(query)
        answer = await iq.send(timeout=15)
    finally:
        await client.disconnect(wait=2.0)
    count = answer.xml.find(f"{{{mam}}}fin/{{{rsm}}}set/{{{rsm}}}count")
    assert count is not None and count.text is not None, f"no archive count in {answer}"
    return int(count.text)


def db_rows_of(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Every row of a query, through a read-only connection."""
    conn = connect_readonly(db)
    try:
        return [tuple(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def db_value(db: Path, sql: str, *params: Any) -> Any:
    """One value from the database through a read-only connection (None if not there yet)."""
    if not db.exists():
        return None
    conn = connect_readonly(db)
    try:
        row = conn.execute(sql, params).fetchone()
    except Exception:
        return None
    finally:
        conn.close()
    return None if row is None else row[0]


def agent_state(db: Path, key: str) -> str | None:
    return db_value(db, "SELECT value FROM agent_state WHERE key = ?", key)


@pytest.fixture
def captured_logs() -> Iterator[list[str]]:
    """Every loguru line emitted during the test, as formatted text."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{level} {extra} {message}")
    try:
        yield lines
    finally:
        logger.remove(sink)


def agent_env(server: XmppServer, db: Path, account: tuple[str, str], **extra: str) -> dict[str, str]:
    """Environment for a real ``xmppmon run`` process against ``server``."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("XMPPMON_")}
    env.update({
        "XMPPMON_XMPP__JID": account[0],
        "XMPPMON_XMPP__PASSWORD": account[1],
        "XMPPMON_XMPP__HOST": "127.0.0.1",
        "XMPPMON_XMPP__PORT": str(server.c2s_port),
        "XMPPMON_XMPP__CA_FILE": str(server.ca_file),
        "XMPPMON_XMPP__NEGOTIATION_TIMEOUT": "5",
        "XMPPMON_MONITOR__JID": server.component,
        "XMPPMON_MONITOR__APPS": '[{"app": "demo", "key": "demo-key"}]',
        "XMPPMON_KEEPALIVE__INTERVAL": "1",
        "XMPPMON_KEEPALIVE__TIMEOUT": "2",
        "XMPPMON_RECONNECT__INITIAL": "0.2",
        "XMPPMON_RECONNECT__MAXIMUM": "1",
        "XMPPMON_STORE__PATH": str(db),
        "XMPPMON_STORE__HEARTBEAT_SECONDS": "1",
        "XMPPMON_LOG__LEVEL": "DEBUG" if os.environ.get("XMPPMON_TEST_DEBUG") else "INFO",
    })  # fmt: skip
    env.update(extra)
    return env
