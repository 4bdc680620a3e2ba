"""Hostile input: nothing a peer sends stops the agent, leaks into other rows, or is silently lost."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
from pathlib import Path

import pytest
from slixmpp import ClientXMPP

from agent.app import run_agent
from agent.config import load_settings
from agent.lab.prosody import ProsodyServer
from agent.session import MonitorSession
from agent.store import Store

from ..conftest import agent_state, db_value, make_settings, new_account, running, wait_until

NS = "urn:xmppmon:monitor:1"
TS = "2026-11-22T10:00:00.000Z"


class RawComponent:
    """An XEP-0114 component over a plain socket, to send bytes no well-behaved library would."""

    def __init__(self, server: ProsodyServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.component_port), timeout=10)
        self.sock.sendall(
            f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'"
            f" to='{server.component}'>".encode()
        )
        header = self._read_until(b">")
        stream_id = re.search(rb"id=['\"]([^'\"]+)", header)
        assert stream_id, header
        digest = hashlib.sha1(stream_id.group(1) + server.component_secret.encode()).hexdigest()
        self.sock.sendall(f"<handshake>{digest}</handshake>".encode())
        assert b"<handshake" in self._read_until(b"handshake")

    def _read_until(self, marker: bytes) -> bytes:
        data = b""
        while marker not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True if the server ended our stream (as it must after malformed XML)."""
        self.sock.settimeout(timeout)
        try:
            while chunk := self.sock.recv(4096):
                if b"</stream:stream>" in chunk or b"stream:error" in chunk:
                    return True
        except (TimeoutError, ConnectionResetError):
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def event(event_id: str, text: str, kind: str = "activity", **attrs: str) -> str:
    base = {"id": event_id, "kind": kind, "app": "demo", "ts": TS} | attrs
    rendered = " ".join(f"{k}='{v}'" for k, v in base.items() if v is not None)
    return f"<event xmlns='{NS}' {rendered}>{text}</event>"


def message(to: str, *events: str) -> str:
    return f"<message from='monitor.localhost' to='{to}'>{''.join(events)}</message>"


def good(n: int) -> str:
    return event(f"good-{n}", json.dumps({"device_id": f"d-{n}"}))


@pytest.mark.prosody
async def test_hostile_events_are_quarantined_and_the_good_ones_kept(
    prosody: ProsodyServer, tmp_path: Path, captured_logs: list[str]
) -> None:
    """Malformed attributes and payloads, huge and deeply nested JSON, thousands of events per stanza,
    broken XML and a DOCTYPE from the service: each bad event is quarantined with a reason, the
    server drops the broken streams, and every good event lands."""
    db = tmp_path / "m.db"
    account = new_account(prosody)
    to = account[0]
    stop = asyncio.Event()
    async with running(run_agent(make_settings(prosody, db, account), stop)) as agent:
        await wait_until(lambda: (agent_state(db, "session") or "").startswith("connected"), what="session")
        raw = RawComponent(prosody)
        bad = [
            event("b1", "[" * 5000 + "]" * 5000),  # nested past any sane depth
            event("b2", json.dumps({"device_id": "d", "blob": "x" * 200_000})),  # over 64 KiB
            event("b3", json.dumps({"device_id": "d"}), id="x" * 300),  # id too long
            event("b4", json.dumps({"device_id": "d"}), app=""),  # empty app
            event("b5", json.dumps({"device_id": "d"}), ts="1732269600"),  # wrong type of time
            event("b6", json.dumps({"device_id": "d"}), kind="telemetry"),  # unknown kind
            event("b7", json.dumps({"api": "reach", "status": "500"}), kind="api"),  # status as text
            event("b8", "&lt;script&gt;alert(1)&lt;/script&gt;"),  # escaped markup, not JSON
            event("b9", json.dumps({"device_id": "d\u202e\u0000"[:2]})),  # odd but legal text: valid
        ]
        raw.send(message(to, good(0), *bad, good(1)))
        raw.send(message(to, *(good(n) for n in range(2, 3002))))  # thousands in one stanza
        await wait_until(lambda: db_value(db, "SELECT count(*) FROM events") == 3003, what="good events")
        await wait_until(lambda: db_value(db, "SELECT count(*) FROM quarantine") == 8, what="quarantine")
        raw.close()

        for poison in (
            b"<message to='" + to.encode() + b"'>\xff\xfe not utf-8</message>",
            message(to, event("c1", '{"device_id": "\x01"}')),  # XML-illegal character
            "<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]>"
            + message(to, event("c2", "{&lol2;}")),
        ):
            raw = RawComponent(prosody)
            raw.send(poison)
            assert raw.closed_by_server(), poison[:40]
            raw.close()
        raw = RawComponent(prosody)
        raw.send(message(to, good(9999)))
        await wait_until(lambda: db_value(db, "SELECT count(*) FROM events") == 3004, what="event after poison")
        raw.close()
        assert (agent_state(db, "session") or "").startswith("connected")
        stop.set()
        await asyncio.wait_for(agent, 15)
    reasons = db_value(db, "SELECT group_concat(reason, ' | ') FROM quarantine")
    for expected in ("not valid JSON", "larger than 65536", "id is malformed", "app is empty",
                     "ts is not an RFC 3339", "unknown kind", "integer HTTP status"):  # fmt: skip
        assert expected in reasons, expected
    assert db_value(db, "SELECT count(*) FROM events WHERE event_id LIKE 'b%' OR event_id LIKE 'c%'") == 1  # b9
    assert db_value(db, "SELECT max(length(raw)) FROM quarantine") <= 256 * 1024 + 100
    assert db_value(db, "PRAGMA integrity_check") == "ok"


@pytest.mark.prosody
async def test_foreign_flood_is_counted_with_rate_limited_logging(
    prosody: ProsodyServer, tmp_path: Path, captured_logs: list[str]
) -> None:
    """2,000 event stanzas from another account are all counted and dropped, with a single log line."""
    db = tmp_path / "m.db"
    account = new_account(prosody)
    flooder_jid, flooder_pw = new_account(prosody)
    stop = asyncio.Event()
    async with running(run_agent(make_settings(prosody, db, account), stop)) as agent:
        await wait_until(lambda: (agent_state(db, "session") or "").startswith("connected"), what="session")
        flooder = ClientXMPP(flooder_jid, flooder_pw)
        flooder.ca_certs = prosody.ca_file
        flooder.enable_direct_tls = False
        flooder.connect(host="127.0.0.1", port=prosody.c2s_port)
        await flooder.wait_until("session_start", 10)
        for n in range(2000):
            flooder.send_raw(f"<message to='{account[0]}/xmppmon'>{good(n)}</message>")
        await wait_until(
            lambda: db_value(db, "SELECT value FROM counters WHERE name='foreign_stanzas'") == 2000,
            timeout=30, what="flood counted",
        )  # fmt: skip
        await flooder.disconnect()
        stop.set()
        await asyncio.wait_for(agent, 15)
    assert db_value(db, "SELECT count(*) FROM events") == 0
    assert 1 <= sum("senders other than" in line for line in captured_logs) <= 2  # one per 10 s


async def test_entity_expansion_in_the_stream_is_refused(tmp_path: Path) -> None:
    """A billion-laughs DOCTYPE fed to the agent's own XML parser is refused without expanding it."""
    settings = load_settings(None, store={"path": str(tmp_path / "m.db")})
    store = await Store.open(settings.store)
    session = MonitorSession(settings, store)
    client = session.client
    disconnects: list[object] = []
    client.add_event_handler("disconnected", disconnects.append)
    try:
        client.init_parser()
        entities = "".join(f"<!ENTITY l{i} '{('&l' + str(i - 1) + ';') * 10}'>" for i in range(1, 10))
        client.data_received(f"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY l0 'lol'>{entities}]>".encode())
        client.data_received(
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
            b" from='localhost' id='x' version='1.0'>"
        )
        client.data_received(message("agent@localhost", event("lol", '{"device_id": "&l9;"}')).encode())
        await store.barrier()
    finally:
        await store.close()
    assert disconnects, "the parser error must end the stream"
    assert db_value(tmp_path / "m.db", "SELECT count(*) FROM events") == 0
