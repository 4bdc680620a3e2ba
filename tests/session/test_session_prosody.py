"""The agent against a real server (Prosody, then ejabberd) and the emulated Monitor API: subscribe, store, survive."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from slixmpp import ClientXMPP

from agent.app import run_agent
from agent.exceptions import SessionError
from agent.lab import emulator
from agent.lab.servers import XmppServer

from ..conftest import (  # noqa: F401 - captured_logs is a fixture
    agent_state,
    captured_logs,
    db_value,
    emulator_options,
    make_settings,
    new_account,
    running,
    wait_until,
)


def sent_ids(log: Path) -> dict[str, str]:
    """Event id -> kind, from the emulator's event log."""
    return {line.split("\t")[0]: line.split("\t")[1] for line in log.read_text().splitlines()}


def connected(db: Path) -> bool:
    return (agent_state(db, "session") or "").startswith("connected")


async def test_subscription_success_and_refusals(
    xmpp_server: XmppServer,
    tmp_path: Path,
    captured_logs: list[str],  # noqa: F811 - the fixture imported above
) -> None:
    """Apps are subscribed after the session starts; each refusal is recorded with its XEP-0086 code,
    and logged as an error: it needs an operator."""
    db = tmp_path / "m.db"
    apps = [
        {"app": "demo", "key": "demo-key"},
        {"app": "demo", "key": "wrong-key"},
        {"app": "billing", "key": "b"},
        {"app": "nosuch", "key": "x"},
    ]
    settings = make_settings(xmpp_server, db, new_account(xmpp_server), monitor={"apps": apps[1:]})
    options = emulator_options(xmpp_server, apps={"demo": "demo-key", "billing": "b"}, refuse={"billing": 402})
    stop = asyncio.Event()
    async with running(emulator.run(options, stop)), running(run_agent(settings, stop)) as agent:
        subs = await wait_until(lambda: agent_state(db, "subscriptions"), what="subscriptions")
        stop.set()
        await asyncio.wait_for(agent, 15)
    assert '"demo":"not-authorized (401)"' in subs
    assert '"billing":"payment-required (402)"' in subs
    assert '"nosuch":"item-not-found (404)"' in subs
    refusals = [line for line in captured_logs if "subscription of app" in line]
    assert any("payment-required (402)" in line for line in refusals), refusals
    assert refusals and all(line.startswith("ERROR") for line in refusals), refusals

    db2 = tmp_path / "ok.db"
    settings = make_settings(xmpp_server, db2, new_account(xmpp_server), monitor={"apps": apps[:1]})
    stop = asyncio.Event()
    async with running(emulator.run(emulator_options(xmpp_server), stop)), running(run_agent(settings, stop)) as agent:
        await wait_until(lambda: agent_state(db2, "subscriptions") == '{"demo":"ok"}', what="ok")
        stop.set()
        await asyncio.wait_for(agent, 15)


async def test_subscription_waits_for_a_monitor_component_that_connects_later(
    xmpp_server: XmppServer,
    tmp_path: Path,
    captured_logs: list[str],  # noqa: F811 - the fixture imported above
) -> None:
    """The Monitor component connects after the agent: the refusal its absence causes (ejabberd:
    ``remote-server-not-found``, type cancel) is retried with backoff until the subscription succeeds,
    and logged as a warning that says so: no operator is needed."""
    db = tmp_path / "m.db"
    settings = make_settings(xmpp_server, db, new_account(xmpp_server))
    stop = asyncio.Event()
    async with running(run_agent(settings, stop)) as agent:
        first = await wait_until(lambda: agent_state(db, "subscriptions"), what="the first subscription attempt")
        assert first != '{"demo":"ok"}', "the component is not connected yet"
        async with running(emulator.run(emulator_options(xmpp_server), stop)):
            await wait_until(lambda: agent_state(db, "subscriptions") == '{"demo":"ok"}', timeout=90, what="subscribed")
            stop.set()
            await asyncio.wait_for(agent, 15)
    retried = [line for line in captured_logs if "subscription of app demo" in line]
    assert retried and all(line.startswith("WARNING") and "retrying" in line for line in retried), retried


async def test_every_kind_lands_exactly_once_with_malformed_and_duplicates(
    xmpp_server: XmppServer, tmp_path: Path
) -> None:
    """A mixed stream lands in its tables once each; malformed events go to quarantine, duplicates vanish."""
    db, log = tmp_path / "m.db", tmp_path / "sent.log"
    account = new_account(xmpp_server)
    settings = make_settings(xmpp_server, db, account)
    options = emulator_options(
        xmpp_server, to=[account[0]], count=3000, batch=20, rate=0, malformed=0.02,
        duplicates=0.05, event_log=log, seed=7, start_delay=0.5,
    )  # fmt: skip
    stop = asyncio.Event()
    async with running(run_agent(settings, stop)) as agent:
        await wait_until(lambda: connected(db), what="session")
        report = await emulator.run(options)
        sent = sent_ids(log)
        expected_received = report.events_sent + report.duplicates_sent
        await wait_until(
            lambda: db_value(db, "SELECT value FROM counters WHERE name='events_received'") == expected_received,
            what="all events received",
        )
        await wait_until(
            lambda: db_value(db, "SELECT count(*) FROM quarantine") == report.malformed_sent,
            what="quarantine",
        )
        stop.set()
        await asyncio.wait_for(agent, 15)
    assert report.events_sent == 3000 and report.duplicates_sent > 0 and report.malformed_sent > 0
    history = {k for k, v in sent.items() if v in ("activity", "event", "job", "error", "crash")}
    api = {k for k, v in sent.items() if v == "api"}
    assert db_value(db, "SELECT count(*) FROM events") == len(history)
    assert db_value(db, "SELECT count(DISTINCT event_id) FROM events") == len(history)
    assert db_value(db, "SELECT count(*) FROM api_calls") == len(api)
    for table in ("devices", "tags", "tokens", "push_feedback"):
        assert db_value(db, f"SELECT count(*) FROM {table}") > 0, table
    assert db_value(db, "SELECT value FROM counters WHERE name='events_duplicate'") > 0
    assert db_value(db, "PRAGMA integrity_check") == "ok"
    reasons = db_value(db, "SELECT group_concat(DISTINCT reason) FROM quarantine")
    assert "not valid JSON" in reasons and "unknown kind" in reasons


async def test_foreign_sender_is_dropped_and_counted(xmpp_server: XmppServer, tmp_path: Path) -> None:
    """An event stanza from a JID other than the Monitor service is counted and never stored."""
    db = tmp_path / "m.db"
    account = new_account(xmpp_server)
    intruder_jid, intruder_pw = new_account(xmpp_server)
    stop = asyncio.Event()
    async with running(run_agent(make_settings(xmpp_server, db, account), stop)) as agent:
        await wait_until(lambda: connected(db), what="session")
        intruder = ClientXMPP(intruder_jid, intruder_pw)
        intruder.ca_certs = xmpp_server.ca_file
        intruder.enable_direct_tls = False
        intruder.connect(host="127.0.0.1", port=xmpp_server.c2s_port)
        await intruder.wait_until("session_start", 10)
        raw = (
            f"<message to='{account[0]}/xmppmon'><event xmlns='urn:xmppmon:monitor:1' id='evil-1'"
            " kind='activity' app='demo' ts='2026-11-22T10:00:00.000Z'>{\"device_id\":\"d\"}</event>"
            "</message>"
        )
        for _ in range(3):
            intruder.send_raw(raw)
        await wait_until(
            lambda: db_value(db, "SELECT value FROM counters WHERE name='foreign_stanzas'") == 3,
            what="foreign counted",
        )
        await intruder.disconnect()
        stop.set()
        await asyncio.wait_for(agent, 15)
    assert db_value(db, "SELECT count(*) FROM events") == 0
    assert db_value(db, "SELECT count(*) FROM quarantine") == 0


async def test_keepalive_pings_are_answered(xmpp_server: XmppServer, tmp_path: Path) -> None:
    """With a 1 s interval the agent pings the server repeatedly and records each round trip."""
    db = tmp_path / "m.db"
    settings = make_settings(xmpp_server, db, new_account(xmpp_server), keepalive={"interval": 0.5, "timeout": 2})
    stop = asyncio.Event()
    async with running(run_agent(settings, stop)) as agent:
        first = await wait_until(lambda: agent_state(db, "last_ping_at"), what="first ping")
        await wait_until(lambda: agent_state(db, "last_ping_at") not in (None, first), what="second ping")
        stop.set()
        await asyncio.wait_for(agent, 15)
    assert float(agent_state(db, "last_ping_rtt_ms") or "nan") < 2000


async def test_a_blocked_event_loop_is_not_a_silent_server(private_xmpp_server: XmppServer, tmp_path: Path) -> None:
    """The agent's own event loop blocked past the ping timeout (a long step, a starved CPU) while the
    answer to a ping arrives: it waits in the socket, unread. That is not a silent server: asyncio
    reads the socket before it runs the expired timers, so the keepalive sees the answer and the
    connection stays. (The server is frozen for a moment first, so that a ping is in flight.)"""
    server, db = private_xmpp_server, tmp_path / "m.db"
    settings = make_settings(server, db, new_account(server), keepalive={"interval": 0.3, "timeout": 2})
    stop = asyncio.Event()
    async with running(run_agent(settings, stop)) as agent:
        await wait_until(lambda: connected(db), what="session")
        for _ in range(3):
            server.freeze()
            await asyncio.sleep(0.8)  # a ping goes out and waits for its answer
            threading.Timer(0.3, server.thaw).start()  # the answer comes while the loop is blocked
            time.sleep(4)  # on purpose: the loop blocked past the 2 s timeout
            await asyncio.sleep(1)
        pinged = agent_state(db, "last_ping_at")
        await wait_until(lambda: agent_state(db, "last_ping_at") != pinged, what="pings go on")
        stop.set()
        await asyncio.wait_for(agent, 15)
    assert agent_state(db, "last_error") != "ping timeout"
    assert db_value(db, "SELECT value FROM counters WHERE name = 'ping_timeouts'") is None


async def test_recovers_from_frozen_server_and_resumes(private_xmpp_server: XmppServer, tmp_path: Path) -> None:
    """A server frozen past interval+timeout is detected, and the stream resumes once it thaws."""
    server, db, log = private_xmpp_server, tmp_path / "m.db", tmp_path / "sent.log"
    account = new_account(server)
    settings = make_settings(server, db, account, keepalive={"interval": 0.5, "timeout": 1})
    stop = asyncio.Event()
    async with running(run_agent(settings, stop)) as agent:
        await wait_until(lambda: connected(db), what="session")
        server.freeze()
        try:
            await wait_until(lambda: agent_state(db, "last_error") == "ping timeout", what="ping timeout")
        finally:
            server.thaw()
        await wait_until(lambda: agent_state(db, "session") == "connected (resumed)", what="resumed")
        report = await emulator.run(emulator_options(server, to=[account[0]], count=200, batch=10, event_log=log))
        await wait_until(
            lambda: (
                db_value(db, "SELECT count(*) FROM events") + db_value(db, "SELECT count(*) FROM api_calls")
                == sum(1 for k in sent_ids(log).values() if k in ("activity", "event", "job", "error", "crash", "api"))
            ),
            what="events after resume",
        )
        stop.set()
        await asyncio.wait_for(agent, 15)
    assert report.events_sent == 200


async def test_recovers_from_killed_and_restarted_server(private_xmpp_server: XmppServer, tmp_path: Path) -> None:
    """After the server is killed and restarted, the agent reconnects with a new session and resubscribes."""
    server, db = private_xmpp_server, tmp_path / "m.db"
    settings = make_settings(server, db, new_account(server))
    stop = asyncio.Event()
    emu = asyncio.ensure_future(emulator.run(emulator_options(server), stop))
    async with running(run_agent(settings, stop)) as agent:
        await wait_until(lambda: agent_state(db, "subscriptions") == '{"demo":"ok"}', what="subscribed")
        server.kill()
        await wait_until(lambda: not connected(db), what="disconnect noticed")
        # The emulator lost its server too, and says so.
        await asyncio.wait([emu], timeout=10)
        assert isinstance(emu.exception(), SessionError)
        server.start()
        async with running(emulator.run(emulator_options(server), stop)):
            await wait_until(lambda: agent_state(db, "session") == "connected", timeout=20, what="reconnect")
            await wait_until(lambda: agent_state(db, "subscriptions") == '{"demo":"ok"}', what="resubscribed")
            stop.set()
            await asyncio.wait_for(agent, 15)
    assert int(agent_state(db, "reconnects") or 0) >= 1


async def test_server_frozen_during_negotiation_times_out_then_connects(
    private_xmpp_server: XmppServer, tmp_path: Path
) -> None:
    """A server that accepts TCP but never negotiates is given up on, and connected to once it thaws."""
    server, db = private_xmpp_server, tmp_path / "m.db"
    settings = make_settings(server, db, new_account(server), xmpp={"negotiation_timeout": 1})
    stop = asyncio.Event()
    server.freeze()
    try:
        async with running(run_agent(settings, stop)) as agent:
            await wait_until(
                lambda: "no XMPP session" in (agent_state(db, "last_error") or ""), what="negotiation timeout"
            )
            server.thaw()
            await wait_until(lambda: connected(db), timeout=20, what="connected after thaw")
            stop.set()
            await asyncio.wait_for(agent, 15)
    finally:
        server.thaw()


async def test_wrong_password_is_reported_and_retried(xmpp_server: XmppServer, tmp_path: Path) -> None:
    """A refused password is one clear error in the state, and the agent keeps running."""
    db = tmp_path / "m.db"
    jid, _ = new_account(xmpp_server)
    settings = make_settings(xmpp_server, db, (jid, "not-the-password"))
    stop = asyncio.Event()
    async with running(run_agent(settings, stop)) as agent:
        await wait_until(lambda: "refused the password" in (agent_state(db, "last_error") or ""), what="auth")
        assert not agent.done()
        stop.set()
        await asyncio.wait_for(agent, 15)
