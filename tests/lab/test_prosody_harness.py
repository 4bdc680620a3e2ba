"""Integration tests for agent.lab.prosody: a real Prosody on loopback, no mocks."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import pytest
from slixmpp import ClientXMPP

from agent.lab.prosody import ProsodyError, ProsodyServer, prosody_version

pytestmark = pytest.mark.prosody

STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)


@pytest.fixture
def server(private_prosody: ProsodyServer) -> ProsodyServer:
    """A started private Prosody (conftest), always stopped afterwards."""
    return private_prosody


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


async def login(server: ProsodyServer, jid: str, password: str, *, trust_ca: bool = True) -> None:
    """Log in with slixmpp over STARTTLS, verifying the chain against server.ca_file."""
    client = ClientXMPP(jid, password)
    if trust_ca:
        # slixmpp 1.17 loads this into its default context (CERT_REQUIRED +
        # check_hostname) at STARTTLS time; the host name checked is the JID domain.
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


def test_start_keeps_everything_in_workdir(server: ProsodyServer) -> None:
    """start() writes config, certs, data, pidfile and log under workdir and tracks the PID."""
    for path in (server.config_path, server.ca_file, server.server_cert, server.server_key):
        assert path.is_file()
        assert path.is_relative_to(server.workdir)
    assert server.log_path.is_relative_to(server.workdir)
    assert server.pid is not None
    assert int(server.pidfile.read_text().strip()) == server.pid
    assert server.c2s_port and server.component_port
    assert server.c2s_port != server.component_port
    assert "Activated service 'c2s'" in server.log_path.read_text()


def test_stream_features_require_starttls(server: ProsodyServer) -> None:
    """The c2s port answers a stream header with features offering mandatory STARTTLS."""
    features = read_features(server.c2s_port)
    assert b"<stream:features" in features
    assert b"urn:ietf:params:xml:ns:xmpp-tls" in features
    assert b"<required" in features


def test_version_helpers() -> None:
    """prosody_version() reports the Debian package version without starting a server."""
    assert prosody_version().startswith("0.12")


async def test_register_and_login_with_verified_tls(server: ProsodyServer) -> None:
    """A prosodyctl-registered account can log in with slixmpp over verified STARTTLS."""
    jid = server.register("alice", "s3cret")
    assert jid == "alice@localhost"
    await login(server, jid, "s3cret")


async def test_wrong_password_is_rejected(server: ProsodyServer) -> None:
    """The login helper really authenticates: a wrong password fails."""
    jid = server.register("bob", "right")
    with pytest.raises(AssertionError, match="auth failed"):
        await login(server, jid, "wrong")


async def test_tls_verification_is_enforced(server: ProsodyServer) -> None:
    """Without trusting server.ca_file the STARTTLS handshake is rejected."""
    jid = server.register("dave", "pw")
    with pytest.raises(AssertionError, match="TLS verification failed"):
        await login(server, jid, "pw", trust_ca=False)


def test_freeze_and_thaw(server: ProsodyServer) -> None:
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


def test_stop_frozen_server_does_not_hang(server: ProsodyServer) -> None:
    """stop() on a SIGSTOPped server terminates it promptly and is idempotent."""
    server.freeze()
    started = time.monotonic()
    server.stop(timeout=5)
    assert time.monotonic() - started < 5
    assert server.pid is None and not server.running
    server.stop()


async def test_kill_and_restart_keep_accounts_and_ports(server: ProsodyServer) -> None:
    """After a SIGKILL crash, restart() reuses the ports and the registered accounts."""
    jid = server.register("carol", "pw")
    ports = (server.c2s_port, server.component_port)
    old_pid = server.pid
    server.kill()
    assert not server.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
    server.restart()
    assert (server.c2s_port, server.component_port) == ports
    assert server.pid not in (None, old_pid)
    await login(server, jid, "pw")


def test_port_in_use_fails_fast(tmp_path: Path) -> None:
    """A c2s port already taken makes start() raise a clear ProsodyError, not hang."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        prosody = ProsodyServer(tmp_path / "busy")
        prosody.c2s_port = holder.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ProsodyError, match="Failed to open server port") as info:
            prosody.start(timeout=8)
        assert time.monotonic() - started < 6
        assert str(prosody.c2s_port) in str(info.value)
        assert prosody.pid is None and not prosody.running


def test_context_manager_and_shell(tmp_path: Path) -> None:
    """The context manager starts and stops the server; the admin shell reaches it."""
    with ProsodyServer(tmp_path / "cm") as prosody:
        assert prosody.running
        assert "0.12" in prosody.shell("server:version()")
    assert not prosody.running
