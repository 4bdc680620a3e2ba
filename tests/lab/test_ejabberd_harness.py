"""Integration tests for agent.lab.ejabberd: a real ejabberd 23.01 on loopback, no mocks.

Besides the harness itself (start, register, TLS, freeze, kill, restart), these pin the ejabberd
behaviour the agent has to live with (docs/servers.md): how replayed and offline stanzas are
marked, what the archive answers to an unknown position, and what the stream-management knobs do.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from agent.lab import emulator
from agent.lab.ejabberd import EjabberdError, EjabberdServer, ejabberd_available, ejabberd_version
from agent.lab.ejabberd.vm import proc_stat

from ..conftest import agent_env, agent_state, db_value, emulator_options, new_account, wait_until

pytestmark = [pytest.mark.ejabberd, pytest.mark.timeout(120)]

NS = emulator.NAMESPACE
MAM_NS = "urn:xmpp:mam:2"
RSM_NS = "http://jabber.org/protocol/rsm"
DELAY_NS = "urn:xmpp:delay"
STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)


@pytest.fixture
def server(private_ejabberd: EjabberdServer) -> EjabberdServer:
    """A started private ejabberd (conftest), always stopped afterwards: for tests that stop, kill or freeze it.

    Tests that only read or add accounts use the run's shared ``ejabberd`` (each VM start costs seconds).
    """
    return private_ejabberd


# -- helpers -------------------------------------------------------------------------------------


def read_features(port: int, domain: str = "localhost", timeout: float = 3.0) -> bytes:
    """Open a c2s stream and return everything received up to </stream:features>."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(STREAM_HEADER.format(domain=domain).encode())
        received = b""
        while b"</stream:features>" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        sock.sendall(b"</stream:stream>")
        return received


async def login(server: EjabberdServer, jid: str, password: str, *, trust_ca: bool = True) -> None:
    """Log in with slixmpp over STARTTLS, verifying the chain against server.ca_file."""
    client = ClientXMPP(jid, password)
    if trust_ca:
        client.ca_certs = server.ca_file
    client.enable_direct_tls = False
    client.enable_starttls = True
    client.enable_plaintext = False
    loop = asyncio.get_running_loop()
    session: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if session.done():
            return
        if exc is None:
            session.set_result(None)
        else:
            session.set_exception(exc)

    client.add_event_handler("session_start", lambda _: settle(None))
    client.add_event_handler("failed_all_auth", lambda _: settle(AssertionError("auth failed")))
    client.add_event_handler("ssl_invalid_chain", lambda exc: settle(AssertionError(f"TLS verification failed: {exc}")))
    client.connect(host="127.0.0.1", port=server.c2s_port)
    try:
        await asyncio.wait_for(session, 8)
        assert client.transport is not None
        tls = client.transport.get_extra_info("ssl_object")
        assert isinstance(tls, ssl.SSLObject), "session is not encrypted"
        assert tls.getpeercert() is not None
    finally:
        client.cancel_connection_attempt()
        await client.disconnect(wait=2)


class Client:
    """A slixmpp client with stream management that keeps every monitor-event message as XML."""

    def __init__(self, server: EjabberdServer, jid: str, password: str, resource: str = "test") -> None:
        self.server = server
        self.xmpp = ClientXMPP(f"{jid}/{resource}", password)
        self.xmpp.ca_certs = server.ca_file
        self.xmpp.enable_direct_tls = False
        self.xmpp.enable_plaintext = False
        self.xmpp.register_plugin("xep_0198", {"allow_resume": True})
        self.events: list[ET.Element] = []
        self.xmpp.register_handler(Callback(
            "monitor events",
            MatchXPath(f"{{jabber:client}}message/{{{NS}}}event"),
            lambda msg: self.events.append(msg.xml),
        ))  # fmt: skip

    async def start(self, *, presence: bool = True, resume: tuple[str, int] | None = None) -> None:
        """Connect; with ``resume`` (sm_id, h), resume that stream instead of starting a session."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        event = "session_start"
        if resume is not None:
            sm = self.xmpp.plugin["xep_0198"]
            sm.sm_id, sm.handled = resume
            event = "session_resumed"
        self.xmpp.add_event_handler(event, lambda _: done.done() or done.set_result(None))
        self.xmpp.connect("127.0.0.1", self.server.c2s_port)
        await asyncio.wait_for(done, 15)
        if presence:
            self.xmpp.send_presence()
            # A round trip: once answered, the server has processed the presence before it, so the
            # session is available (messages to the bare JID reach it instead of offline storage).
            await self.xmpp.get_roster(timeout=10)

    def stream_position(self) -> tuple[str, int]:
        sm = self.xmpp.plugin["xep_0198"]
        return sm.sm_id, sm.handled

    async def mam(self, *, after: str | None = None, page: int = 50) -> tuple[list[ET.Element], ET.Element]:
        """One MAM page of messages from the component: (the forwarded messages' results, <fin/>)."""
        query = ET.Element(f"{{{MAM_NS}}}query", {"queryid": self.xmpp.new_id()})
        form = ET.SubElement(query, "{jabber:x:data}x", {"type": "submit"})
        for var, value in (("FORM_TYPE", MAM_NS), ("with", self.server.component)):
            field = ET.SubElement(form, "{jabber:x:data}field", {"var": var})
            ET.SubElement(field, "{jabber:x:data}value").text = value
        rsm = ET.SubElement(query, f"{{{RSM_NS}}}set")
        ET.SubElement(rsm, f"{{{RSM_NS}}}max").text = str(page)
        if after is not None:
            ET.SubElement(rsm, f"{{{RSM_NS}}}after").text = after
        results: list[ET.Element] = []
        name = f"mam {query.get('queryid')}"
        self.xmpp.register_handler(Callback(
            name,
            MatchXPath(f"{{jabber:client}}message/{{{MAM_NS}}}result"),
            lambda msg: results.append(msg.xml.find(f"{{{MAM_NS}}}result")),
        ))  # fmt: skip
        iq = self.xmpp.Iq()
        iq["type"] = "set"
        iq.append(query)
        try:
            answer = await iq.send(timeout=15)
        finally:
            self.xmpp.remove_handler(name)
        fin = answer.xml.find(f"{{{MAM_NS}}}fin")
        assert fin is not None, str(answer)
        return results, fin

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.xmpp.disconnect(), 5)


@contextlib.asynccontextmanager
async def client_of(server: EjabberdServer, account: tuple[str, str], **start: Any) -> AsyncIterator[Client]:
    client = Client(server, *account)
    await client.start(**start)
    try:
        yield client
    finally:
        await client.stop()


async def send_events(server: EjabberdServer, to: str, count: int, log: Path | None = None) -> None:
    """Stream ``count`` activity events from the emulator component to ``to``, one per stanza."""
    options = emulator_options(server, to=[to], count=count, batch=1, kinds=("activity",), event_log=log)
    report = await emulator.run(options)
    assert report.events_sent == count


def event_ids(messages: list[ET.Element]) -> list[str]:
    return [e.get("id", "") for m in messages for e in m.iter(f"{{{NS}}}event")]


def delay_of(message: ET.Element) -> tuple[str | None, str | None]:
    """(from, text) of a message's own XEP-0203 delay, or (None, None)."""
    delay = message.find(f"{{{DELAY_NS}}}delay")
    return (None, None) if delay is None else (delay.get("from"), delay.text)


def rsm(fin: ET.Element, name: str) -> str | None:
    node = fin.find(f"{{{RSM_NS}}}set/{{{RSM_NS}}}{name}")
    return None if node is None else node.text


def own_processes(server: EjabberdServer) -> list[str]:
    """Command lines of live processes that belong to this instance (its node name or workdir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (server.node in cmdline or str(server.workdir) in cmdline):
            found.append(f"{entry.name}: {cmdline}")
    return found


# -- the harness ---------------------------------------------------------------------------------


def test_start_keeps_everything_in_workdir(ejabberd: EjabberdServer) -> None:
    """start() writes config, certs, SQLite database, spool, pidfile, cookie and logs under workdir."""
    for path in (ejabberd.config_path, ejabberd.ca_file, ejabberd.server_cert, ejabberd.server_key, ejabberd.database):
        assert path.is_file()
        assert path.is_relative_to(ejabberd.workdir)
    assert ejabberd.log_path.is_relative_to(ejabberd.workdir)
    assert ejabberd.mnesia_dir.is_relative_to(ejabberd.workdir) and any(ejabberd.mnesia_dir.iterdir())
    assert ejabberd.pid is not None
    assert int(ejabberd.pidfile.read_text().strip()) == ejabberd.pid
    ports = {ejabberd.c2s_port, ejabberd.component_port, ejabberd.dist_port}
    assert len(ports) == 3 and 0 not in ports
    assert f"is started in the node {ejabberd.node}" in ejabberd.log_path.read_text()
    # A private node and cookie, no epmd: Debian's ejabberd@localhost and port 4369 are never used.
    assert ejabberd.node.startswith("xmppmon_") and ejabberd.node != "ejabberd@localhost"
    argv = Path(f"/proc/{ejabberd.pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"-start_epmd") + 1] == b"false"
    assert argv[argv.index(b"-erl_epmd_port") + 1] == str(ejabberd.dist_port).encode()
    cookie = ejabberd.home_dir / ".erlang.cookie"
    assert cookie.stat().st_mode & 0o777 == 0o400
    assert cookie.read_text() not in " ".join(own_processes(ejabberd))
    # SQL storage on SQLite, with ejabberd's schema.
    with contextlib.closing(sqlite3.connect(ejabberd.database)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert {"users", "archive", "spool", "rosterusers"} <= tables
    assert journal == "wal"
    assert not Path("/var/lib/ejabberd", ejabberd.node).exists()


def test_config_has_the_settings_the_agent_needs(ejabberd: EjabberdServer) -> None:
    """SQL storage, MAM always, no c2s shaper, STARTTLS required, the stream-management knobs."""
    config = ejabberd.config()
    assert (config["default_db"], config["sql_type"]) == ("sql", "sqlite")
    c2s = next(listener for listener in config["listen"] if listener["module"] == "ejabberd_c2s")
    assert c2s["shaper"] == "none" and c2s["starttls_required"] is True
    assert config["modules"]["mod_mam"]["default"] == "always"
    assert config["modules"]["mod_stream_mgmt"] == {
        "resume_timeout": ejabberd.resume_timeout,
        "max_ack_queue": ejabberd.max_ack_queue,
        "resend_on_timeout": "if_offline",
    }
    assert config["shaper_rules"]["max_user_offline_messages"] == 100
    unlimited = EjabberdServer(ejabberd.workdir / "x", offline_limit=None, hibernation_time=7, max_queue_size=9)
    assert unlimited.config()["shaper_rules"]["max_user_offline_messages"] == "infinity"
    assert unlimited.config()["modules"]["mod_stream_mgmt"]["resume_timeout"] == 7
    merged = EjabberdServer(ejabberd.workdir / "y", extra_config={"modules": {"mod_mam": {"assume_mam_usage": True}}})
    assert merged.config()["modules"]["mod_mam"] == {"default": "always", "assume_mam_usage": True}


async def test_dns_lookups_stay_on_the_machine(ejabberd: EjabberdServer) -> None:
    """A stanza to a component that is not connected makes ejabberd try s2s: its DNS client asks no name server.

    Without the private inet configuration the VM's resolver reads /etc/resolv.conf and queries the
    machine's name server for ``_xmpp-server._tcp.<component>``.
    """
    environ = Path(f"/proc/{ejabberd.pid}/environ").read_bytes().split(b"\0")
    assert f"ERL_INETRC={ejabberd.inetrc_path}".encode() in environ
    assert ejabberd.inetrc_path.read_text() == '{resolv_conf, ""}.\n{hosts_file, ""}.\n'
    async with client_of(ejabberd, (ejabberd.register("dns", "pw"), "pw"), presence=False) as client:
        iq = client.xmpp.Iq()
        iq["type"], iq["to"] = "get", "nowhere.localhost"
        iq.append(ET.Element(f"{{{NS}}}subscribe"))
        with pytest.raises(IqError) as refused:
            await iq.send(timeout=10)
    assert refused.value.iq["error"]["condition"] == "remote-server-not-found"
    # ejabberd's logger writes asynchronously: the line may land after the bounce.
    await wait_until(
        lambda: "nowhere.localhost: DNS lookup failed" in ejabberd.log_path.read_text(), 10, "the log line"
    )


def test_stream_features_require_starttls(ejabberd: EjabberdServer) -> None:
    """The c2s port answers a stream header with features offering mandatory STARTTLS."""
    features = read_features(ejabberd.c2s_port)
    assert b"<stream:features" in features
    assert b"urn:ietf:params:xml:ns:xmpp-tls" in features
    assert b"<required" in features


def test_version_helpers() -> None:
    """ejabberd_version() reports the Debian package version without starting a node."""
    assert ejabberd_available()
    assert ejabberd_version().startswith("23.01")


async def test_register_and_login_with_verified_tls(ejabberd: EjabberdServer) -> None:
    """An ejabberdctl-registered account can log in with slixmpp over verified STARTTLS."""
    jid = ejabberd.register("alice", "s3cret")
    assert jid == "alice@localhost"
    assert "alice" in ejabberd.ctl("registered_users", "localhost").split()
    await login(ejabberd, jid, "s3cret")


async def test_wrong_password_is_rejected(ejabberd: EjabberdServer) -> None:
    """The login helper really authenticates: a wrong password fails."""
    jid = ejabberd.register("bob", "right")
    with pytest.raises(AssertionError, match="auth failed"):
        await login(ejabberd, jid, "wrong")


async def test_register_again_resets_the_password(ejabberd: EjabberdServer) -> None:
    """Registering an existing user sets the new password (as prosodyctl register does)."""
    jid = ejabberd.register("erin", "old")
    ejabberd.register("erin", "new")
    await login(ejabberd, jid, "new")


async def test_tls_verification_is_enforced(ejabberd: EjabberdServer) -> None:
    """Without trusting ejabberd.ca_file the STARTTLS handshake is rejected."""
    jid = ejabberd.register("dave", "pw")
    with pytest.raises(AssertionError, match="TLS verification failed"):
        await login(ejabberd, jid, "pw", trust_ca=False)


def test_freeze_and_thaw(server: EjabberdServer) -> None:
    """A frozen server answers nothing; after thaw it answers stream features again."""
    server.freeze()
    assert server.frozen
    try:
        with pytest.raises(TimeoutError):
            read_features(server.c2s_port, timeout=0.5)
    finally:
        server.thaw()
    assert not server.frozen
    assert b"<stream:features" in read_features(server.c2s_port)


def test_stop_frozen_server_does_not_hang_and_leaves_nothing(server: EjabberdServer) -> None:
    """stop() on a SIGSTOPped server ends it (thawed first, so SIGTERM is acted on) with every helper; idempotent."""
    assert own_processes(server), "the VM should show up with its node name"
    server.freeze()
    server.stop(timeout=5)
    assert server.pid is None and not server.running
    assert own_processes(server) == []
    server.stop()


def test_graceful_stop_leaves_no_process(tmp_path: Path) -> None:
    """A graceful stop (ejabberd logs it) leaves no beam, erl_child_setup or inet_gethost."""
    with EjabberdServer(tmp_path / "graceful") as ejabberd:
        helpers = subprocess.run(
            ["ps", "-o", "pid=,comm=", "--ppid", str(ejabberd.pid)], capture_output=True, text=True, check=False
        ).stdout
        assert "erl_child_setup" in helpers
        ejabberd.stop()
        assert own_processes(ejabberd) == []
        assert "is stopped in the node" in ejabberd.log_path.read_text()
    pids = [int(line.split()[0]) for line in helpers.splitlines()]
    # Dead: gone, or a zombie that its new parent (not ours to wait for) has yet to reap.
    assert not [pid for pid in pids if (proc_stat(pid) or (0, 0, "Z"))[2] != "Z"]


async def test_kill_and_restart_keep_accounts_archive_and_ports(server: EjabberdServer) -> None:
    """After a SIGKILL crash, restart() reuses the ports, the accounts and the MAM archive."""
    account = server.register("carol", "pw"), "pw"
    await send_events(server, account[0], 5)
    ports = (server.c2s_port, server.component_port, server.dist_port)
    old_pid = server.pid
    server.kill()
    assert not server.running and own_processes(server) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
    server.restart()
    assert (server.c2s_port, server.component_port, server.dist_port) == ports
    assert server.pid not in (None, old_pid)
    await login(server, *account)
    async with client_of(server, account, presence=False) as client:
        results, fin = await client.mam()
    assert len(results) == 5 and fin.get("complete") == "true"


def test_start_returns_with_the_sql_pool_started(server: EjabberdServer) -> None:
    """Concurrent first SQL users right after start() do not crash: start() has started ejabberd's SQL pool.

    ejabberd 23.01 starts its SQL pool lazily, at the first query, and a second query made while
    the pool is starting fails (badarg in ejabberd_sql:get_worker/1). A stanza routed then is
    dropped ("Failed to route packet": neither archived nor stored offline nor bounced); the chaos
    soak lost 4 events that way when the agent's login and the emulator's first stanza met just
    after a restart (docs/reliability.md). Here, parallel admin calls play the concurrent users.
    """
    server.register("dora", "pw")

    def users(_: int) -> str:
        try:
            return server.ctl("registered_users", server.domain)
        except EjabberdError as exc:
            return f"failed: {exc}"

    for attempt in range(3):
        server.kill()
        server.start()
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(users, range(6)))
        failed = [a for a in answers if a.startswith("failed")]
        assert not failed, f"restart {attempt + 1}: {failed[0][:400]}"
        assert all("dora" in a for a in answers)


async def test_register_on_a_stopped_server(server: EjabberdServer) -> None:
    """register() writes into the database while the server is down; the account works after start."""
    server.stop()
    jid = server.register("frank", "offline-pw")
    server.start()
    await login(server, jid, "offline-pw")


def test_port_in_use_fails_fast(tmp_path: Path) -> None:
    """A c2s port already taken makes start() raise a clear EjabberdError, not hang."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        ejabberd = EjabberdServer(tmp_path / "busy")
        ejabberd.c2s_port = holder.getsockname()[1]
        # Not the readiness timeout: the exit of the VM is noticed and explained.
        with pytest.raises(EjabberdError, match="already in use") as info:
            ejabberd.start(timeout=60)
        assert str(ejabberd.c2s_port) in str(info.value)
        assert ejabberd.pid is None and not ejabberd.running
        assert own_processes(ejabberd) == []


def test_invalid_option_fails_fast(tmp_path: Path) -> None:
    """A config ejabberd refuses is reported with ejabberd's own reason."""
    ejabberd = EjabberdServer(tmp_path / "bad", extra_config={"modules": {"mod_mam": {"no_such_option": 1}}})
    with pytest.raises(EjabberdError, match="Unknown option: no_such_option"):
        ejabberd.start(timeout=20)
    assert not ejabberd.running


def test_context_manager_and_shell(tmp_path: Path) -> None:
    """The context manager starts and stops the server; the admin commands reach it."""
    with EjabberdServer(tmp_path / "cm") as ejabberd:
        assert ejabberd.running
        assert "23.01" in ejabberd.shell("status")
        assert ejabberd.ctl("connected_users_number") == "0"
    assert not ejabberd.running
    with pytest.raises(EjabberdError, match="not running"):
        ejabberd.ctl("status")


async def test_muc_rooms_are_created_by_joining(tmp_path: Path) -> None:
    """With muc=..., a room is created by joining it and relays groupchat messages."""
    room = JID("ops@conference.localhost")
    with EjabberdServer(tmp_path / "muc", muc="conference.localhost") as ejabberd:
        clients = [ClientXMPP(ejabberd.register(name, "pw") + "/desk", "pw") for name in ("op1", "op2")]
        bodies: list[str] = []
        for client in clients:
            client.ca_certs = ejabberd.ca_file
            client.enable_direct_tls, client.enable_plaintext = False, False
            client.register_plugin("xep_0045")
            client.connect(host="127.0.0.1", port=ejabberd.c2s_port)
            await client.wait_until("session_start", 10)
            client.send_presence()
            await client.plugin["xep_0045"].join_muc_wait(room, client.boundjid.user, maxstanzas=0, timeout=10)
        clients[1].add_event_handler("groupchat_message", lambda msg: bodies.append(msg["body"]))
        clients[0].send_message(mto=room, mbody="hello room", mtype="groupchat")
        try:
            await wait_until(lambda: "hello room" in bodies, 10, "the groupchat message")
        finally:
            for client in clients:
                await client.disconnect(wait=2.0)


# -- the emulator and the agent against ejabberd --------------------------------------------------


async def test_agent_process_receives_the_component_stream(ejabberd: EjabberdServer, tmp_path: Path) -> None:
    """End to end: ``xmppmon run`` subscribes at the emulator component and stores its stream once."""
    db, log, out = tmp_path / "m.db", tmp_path / "sent.log", tmp_path / "agent.log"
    account = new_account(ejabberd)
    options = emulator_options(ejabberd, count=600, batch=10, event_log=log, seed=3)
    stream = asyncio.ensure_future(emulator.run(options))
    with out.open("ab") as sink:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run"], env=agent_env(ejabberd, db, account), stdout=sink, stderr=sink
        )
    try:
        await wait_until(lambda: agent_state(db, "subscriptions") == '{"demo":"ok"}', 20, "subscribed")
        report = await asyncio.wait_for(stream, 30)
        stored = await wait_until(lambda: sent_kinds_stored(db, log), 30, "every event stored once")
        agent.terminate()
        assert agent.wait(30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
    assert report.events_sent == 600 and report.subscribes_ok == 1
    assert stored > 0
    assert db_value(db, "PRAGMA integrity_check") == "ok"
    assert "session started" in out.read_text(errors="replace")


def sent_kinds_stored(db: Path, log: Path) -> int:
    """The number of history and api events the emulator sent, once all of them are in the database, else 0."""
    want = {
        line.split("\t")[0]
        for line in log.read_text().splitlines()
        if line.split("\t")[1] in ("activity", "event", "job", "error", "crash", "api")
    }
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT event_id FROM events UNION ALL SELECT event_id FROM api_calls").fetchall()
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
    got = [r[0] for r in rows]
    return len(got) if set(got) == want and len(got) == len(want) else 0


async def test_mam_query_returns_the_components_messages(ejabberd: EjabberdServer, tmp_path: Path) -> None:
    """Messages from the component are archived (SQL) with a stanza-id, and MAM pages through them in order."""
    log = tmp_path / "sent.log"
    account = new_account(ejabberd)
    await send_events(ejabberd, account[0], 30, log)
    sent = [line.split("\t")[0] for line in log.read_text().splitlines()]
    async with client_of(ejabberd, account, presence=False) as client:
        first, fin = await client.mam(page=20)
        assert fin.get("complete") == "false" and rsm(fin, "count") == "30"
        rest, fin = await client.mam(after=rsm(fin, "last"), page=20)
        assert fin.get("complete") == "true"
    results = first + rest
    forwarded = [r.find("{urn:xmpp:forward:0}forwarded/{jabber:client}message") for r in results]
    assert event_ids([m for m in forwarded if m is not None]) == sent
    for result, message in zip(results, forwarded, strict=True):
        assert message is not None and message.get("from") == ejabberd.component
        stanza_id = message.find("{urn:xmpp:sid:0}stanza-id")
        assert stanza_id is not None and stanza_id.get("by") == account[0]
        assert stanza_id.get("id") == result.get("id")
    with contextlib.closing(sqlite3.connect(ejabberd.database)) as db:
        user = account[0].split("@")[0]
        assert db.execute("SELECT count(*) FROM archive WHERE username = ?", (user,)).fetchone()[0] == 30


# -- ejabberd's behaviour, pinned (docs/servers.md) -----------------------------------------------


async def test_offline_and_resumed_stanzas_are_marked_by_the_domain(ejabberd: EjabberdServer) -> None:
    """Offline delivery: <delay from='DOMAIN'>Offline Storage</delay>; resumption: <delay from='DOMAIN'>Resent</delay>.

    Unlike Prosody, whose replayed stanzas carry a delay from the user's bare JID, both come from
    the domain: the delay's ``from`` cannot tell the two paths apart on ejabberd, its text can.
    """
    account = new_account(ejabberd)
    await send_events(ejabberd, account[0], 2)
    async with client_of(ejabberd, account) as client:
        await wait_until(lambda: len(client.events) == 2, 10, "offline delivery")
        assert [delay_of(m) for m in client.events] == [("localhost", "Offline Storage")] * 2
        await send_events(ejabberd, account[0], 1)
        await wait_until(lambda: len(client.events) == 3, 10, "live delivery")
        assert delay_of(client.events[2]) == (None, None)
        position = client.stream_position()
        client.xmpp.abort()  # TCP gone, no </stream>: the server keeps the session for resumption
    await asyncio.sleep(0.3)
    await send_events(ejabberd, account[0], 2)
    resumed = Client(ejabberd, *account)
    try:
        await resumed.start(presence=False, resume=position)
        await wait_until(lambda: len(resumed.events) == 2, 10, "replay on resumption")
        assert [delay_of(m) for m in resumed.events] == [("localhost", "Resent")] * 2
    finally:
        await resumed.stop()


async def test_unknown_archive_position_is_not_item_not_found(ejabberd: EjabberdServer) -> None:
    """ejabberd reads RSM ``after`` as a number (its ids are microsecond timestamps), never as a lookup.

    An unknown non-numeric id gives the first page of the whole archive; an id between two archive
    ids gives the ones after it; an id past the newest gives an empty, complete page. None is an error.
    """
    account = new_account(ejabberd)
    await send_events(ejabberd, account[0], 6)
    async with client_of(ejabberd, account, presence=False) as client:
        everything, _ = await client.mam()
        ids = [r.get("id", "") for r in everything]
        assert len(ids) == 6 and all(i.isdigit() for i in ids) and ids == sorted(ids, key=int)

        results, fin = await client.mam(after="no-such-id", page=4)
        assert [r.get("id") for r in results] == ids[:4]
        assert fin.get("complete") == "false" and rsm(fin, "first") == ids[0]

        results, fin = await client.mam(after=str(int(ids[1]) + 1), page=4)
        assert [r.get("id") for r in results] == ids[2:]

        results, fin = await client.mam(after=str(int(ids[-1]) * 10), page=4)
        assert results == [] and fin.get("complete") == "true"
        assert rsm(fin, "count") == "6" and rsm(fin, "first") is None and rsm(fin, "last") is None


async def test_stream_management_knobs(tmp_path: Path) -> None:
    """hibernation_time is resume_timeout, max_queue_size is max_ack_queue; what each does when exceeded.

    * resume timeout over: the queue goes to offline storage, still marked ``Resent`` (not
      ``Offline Storage``), and the next session gets it.
    * more unacknowledged stanzas than max_ack_queue: the session ends at once ("Too many unacked
      stanzas", policy-violation), resumption fails with item-not-found, and the queue does not go
      to offline storage: only the archive has those messages.
    """
    with EjabberdServer(tmp_path / "knobs", hibernation_time=2, max_queue_size=5) as ejabberd:
        expire = new_account(ejabberd)
        async with client_of(ejabberd, expire) as client:
            client.xmpp.abort()
        await asyncio.sleep(0.3)
        await send_events(ejabberd, expire[0], 3)
        await wait_until(
            lambda: "Timed out waiting for stream resumption" in ejabberd.log_path.read_text(), 10, "resume timeout"
        )
        async with client_of(ejabberd, expire) as client:
            await wait_until(lambda: len(client.events) == 3, 10, "the expired queue from offline storage")
            assert [delay_of(m) for m in client.events] == [("localhost", "Resent")] * 3

        overflow = new_account(ejabberd)
        async with client_of(ejabberd, overflow) as client:
            position = client.stream_position()
            client.xmpp.abort()
        await asyncio.sleep(0.3)
        await send_events(ejabberd, overflow[0], 8)
        await wait_until(lambda: "Too many unacked stanzas" in ejabberd.log_path.read_text(), 10, "queue overflow")
        user = overflow[0].split("@")[0]
        with contextlib.closing(sqlite3.connect(ejabberd.database)) as db:
            offline = db.execute("SELECT count(*) FROM spool WHERE username = ?", (user,)).fetchone()[0]
            archived = db.execute("SELECT count(*) FROM archive WHERE username = ?", (user,)).fetchone()[0]
        assert (offline, archived) == (0, 8)
        failed: list[str] = []
        late = Client(ejabberd, *overflow)
        late.xmpp.register_handler(
            Callback("sm failed", MatchXPath("{urn:xmpp:sm:3}failed"), lambda s: failed.append(str(s)))
        )
        sm = late.xmpp.plugin["xep_0198"]
        sm.sm_id, sm.handled = position
        late.xmpp.connect("127.0.0.1", ejabberd.c2s_port)
        try:
            await wait_until(lambda: failed, 10, "<failed/>")
        finally:
            await late.stop()
        assert "item-not-found" in failed[0] and "Previous session not found" in failed[0]
