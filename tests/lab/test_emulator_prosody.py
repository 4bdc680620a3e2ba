"""The emulator against a real Prosody, received by a plain slixmpp client (no agent code)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from slixmpp import ClientXMPP, Iq
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from agent.lab import emulator
from agent.lab.prosody import ProsodyServer

from ..conftest import emulator_options, new_account, running, wait_until

pytestmark = pytest.mark.prosody

NS = emulator.NAMESPACE


class Receiver:
    """A logged-in client that collects the ids of the events it receives, in order."""

    def __init__(self, server: ProsodyServer, jid: str, password: str) -> None:
        self.client = ClientXMPP(f"{jid}/test", password)
        self.client.ca_certs = server.ca_file
        self.client.enable_direct_tls = False
        self.client.enable_plaintext = False
        self.ids: list[str] = []
        self.server = server
        # Payload-only messages do not fire slixmpp's 'message' event.
        self.client.register_handler(Callback(
            "monitor events",
            MatchXPath(f"{{jabber:client}}message/{{{NS}}}event"),
            self._on_events,
        ))  # fmt: skip

    def _on_events(self, msg: object) -> None:
        xml = msg.xml  # type: ignore[attr-defined]
        self.ids.extend(e.get("id") for e in xml.findall(f"{{{NS}}}event"))

    async def start(self) -> None:
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.client.add_event_handler("session_start", lambda _: started.done() or started.set_result(None))
        self.client.connect("127.0.0.1", self.server.c2s_port)
        await asyncio.wait_for(started, 15)
        self.client.send_presence()

    async def subscribe(self, app: str, key: str, verb: str = "subscribe") -> Iq:
        # The emulator runs as a task: on a loaded machine its component may not be connected yet,
        # and the server answers for it (remote-server-timeout, "Component unavailable").
        deadline = time.monotonic() + 15
        while True:
            iq = self.client.make_iq_set(ito=self.server.component)
            iq.append(ET.Element(f"{{{NS}}}{verb}", {"app": app, "key": key}))
            try:
                return await iq.send(timeout=10)
            except IqError as exc:
                if exc.iq["error"]["condition"] != "remote-server-timeout" or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(), 5)


@contextlib.asynccontextmanager
async def receiver(server: ProsodyServer) -> AsyncIterator[Receiver]:
    jid, password = new_account(server)
    r = Receiver(server, jid, password)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def logged_ids(log: Path) -> list[str]:
    return [line.split("\t")[0] for line in log.read_text(encoding="utf-8").splitlines()]


async def test_streamed_events_match_the_event_log(prosody: ProsodyServer, tmp_path: Path) -> None:
    """Every event streamed with --to arrives once and in order, exactly as the event log says."""
    log = tmp_path / "sent.log"
    async with receiver(prosody) as client:
        options = emulator_options(
            prosody, to=[client.client.boundjid.bare], count=200, batch=10, event_log=log,
            seed=11,
        )  # fmt: skip
        report = await emulator.run(options)
        assert (report.events_sent, report.stanzas_sent) == (200, 20)
        await wait_until(lambda: len(client.ids) >= 200, what="200 events at the client")
    assert client.ids == logged_ids(log)
    assert len(set(client.ids)) == 200


async def test_malformed_and_duplicates_reach_the_client(prosody: ProsodyServer, tmp_path: Path) -> None:
    """Malformed events and duplicates travel in the same stanzas; the log lists valid ones once."""
    log = tmp_path / "sent.log"
    async with receiver(prosody) as client:
        options = emulator_options(
            prosody, to=[client.client.boundjid.bare], count=100, batch=20, event_log=log,
            malformed=0.2, duplicates=0.1,
        )  # fmt: skip
        report = await emulator.run(options)
        total = report.events_sent + report.malformed_sent + report.duplicates_sent
        assert (report.events_sent, report.malformed_sent, report.duplicates_sent) == (100, 20, 10)
        await wait_until(lambda: len(client.ids) >= total, what="every event at the client")
    valid = logged_ids(log)
    assert len(valid) == 100 == len(set(valid))
    copies = Counter(i for i in client.ids if i in set(valid))
    assert set(copies) == set(valid)
    assert Counter(copies.values()) == {1: 90, 2: 10}
    assert len(client.ids) == total


async def test_subscribe_opens_and_unsubscribe_closes_the_stream(prosody: ProsodyServer, tmp_path: Path) -> None:
    """A subscribe with the right key streams to the bare JID until an unsubscribe stops it."""
    log = tmp_path / "sent.log"
    stop = asyncio.Event()
    options = emulator_options(prosody, apps={"demo": "demo-key"}, rate=500, event_log=log)
    async with receiver(prosody) as client, running(emulator.run(options, stop)) as emu:
        await asyncio.sleep(0.3)  # the component is up
        result = await client.subscribe("demo", "demo-key")
        assert result["type"] == "result"
        await wait_until(lambda: len(client.ids) >= 50, what="events after subscribing")
        result = await client.subscribe("demo", "", verb="unsubscribe")
        assert result["type"] == "result"
        received = len(client.ids)  # the server keeps the component's order: nothing after this
        await asyncio.sleep(0.3)
        stop.set()
        report = await asyncio.wait_for(emu, 15)
    assert report.subscribes_ok == 1 and report.subscribes_refused == 0
    assert len(client.ids) == received == report.events_sent
    assert client.ids == logged_ids(log)


@pytest.mark.parametrize(
    ("app", "key", "condition", "code"),
    [
        ("demo", "sdk-key", "not-authorized", 401),
        ("nope", "demo-key", "item-not-found", 404),
        ("billing", "b", "payment-required", 402),
    ],
)
async def test_subscribe_refusals_carry_condition_and_code(
    prosody: ProsodyServer, app: str, key: str, condition: str, code: int
) -> None:
    """Refused subscribes come back as XMPP errors with the XEP-0086 condition and legacy code."""
    stop = asyncio.Event()
    options = emulator_options(prosody, apps={"demo": "demo-key", "billing": "b"},
                               refuse={"billing": 402})  # fmt: skip
    async with receiver(prosody) as client, running(emulator.run(options, stop)) as emu:
        await asyncio.sleep(0.3)
        with pytest.raises(IqError) as refused:
            await client.subscribe(app, key)
        error = refused.value.iq["error"]
        assert (error["condition"], error["code"]) == (condition, str(code))
        assert error["type"] == emulator.CONDITIONS[code][1]
        await asyncio.sleep(0.2)
        assert client.ids == []
        stop.set()
        report = await asyncio.wait_for(emu, 15)
    assert (report.subscribes_ok, report.subscribes_refused, report.events_sent) == (0, 1, 0)


async def test_wrong_secret_is_an_authentication_error(prosody: ProsodyServer) -> None:
    """A component secret the server refuses ends run() with a clear AuthenticationError."""
    options = emulator_options(prosody, connect_timeout=10.0)
    options.secret = "wrong"
    with pytest.raises(emulator.AuthenticationError, match="--secret"):
        await emulator.run(options)
