"""Logging: the short line, JSON lines with bound fields, stdlib routing, rate-limited repeats, no secrets."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from loguru import logger

from agent.config import LogSettings, load_settings
from agent.lab import emulator
from agent.lab.prosody import ProsodyServer
from agent.logs import Redactor, RepeatFilter, secrets_of, setup_logging

from .conftest import agent_state, emulator_options, new_account, running, wait_until


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put loguru and the stdlib root logger back as they were for the other tests."""
    yield
    logger.remove()
    logger.configure(patcher=lambda record: None, extra={})
    logger.add(sys.stderr)
    logging.basicConfig(handlers=[], force=True)


def test_default_line_is_short_with_key_fields(restore_logging: None) -> None:
    """Level, component, message and the bound key fields; no time stamp (journald adds it)."""
    out = io.StringIO()
    setup_logging(LogSettings(), stream=out)
    logger.bind(component="store", app="demo", event_id="e-1").info("stored {} events", 3)
    logger.info("plain")
    assert out.getvalue().splitlines() == [
        "INFO    store: stored 3 events [app=demo event_id=e-1]",
        "INFO    xmppmon: plain",
    ]


def test_json_lines_carry_structured_fields_and_stdlib_records(restore_logging: None) -> None:
    """XMPPMON_LOG__JSON gives one JSON object per line, with bound fields and stdlib loggers routed in."""
    out = io.StringIO()
    setup_logging(LogSettings(json=True), stream=out)
    logger.bind(component="session", app="demo", event_id="e-1", stanza_id="s-9",
                client_request_id="c-7").warning("odd {}", "event")  # fmt: skip
    logging.getLogger("slixmpp.xmlstream.test").error("from the standard library")
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] | {"ts": None} == {
        "ts": None, "level": "WARNING", "component": "session", "message": "odd event",
        "app": "demo", "event_id": "e-1", "stanza_id": "s-9", "client_request_id": "c-7",
    }  # fmt: skip
    assert lines[1]["component"] == "slixmpp.xmlstream.test"
    assert lines[1]["message"] == "from the standard library"


def test_identical_errors_are_rate_limited_with_a_count() -> None:
    """The same error is written once per window; the next one written says how many were suppressed."""
    now = [0.0]
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), filter=RepeatFilter(60, lambda: now[0]),
                      format="{message}")  # fmt: skip
    try:
        for _ in range(50):
            logger.error("cannot connect to 10.0.0.1:5222")
            now[0] += 1
        logger.error("a different error")
        logger.info("infos are never limited")
        logger.info("infos are never limited")
        now[0] = 61
        logger.error("cannot connect to 10.0.0.1:5222")
    finally:
        logger.remove(sink)
    assert lines == [
        "cannot connect to 10.0.0.1:5222",
        "a different error",
        "infos are never limited",
        "infos are never limited",
        "cannot connect to 10.0.0.1:5222 (suppressed 49 similar in the last 61 s)",
    ]


def test_redactor_hides_secrets_and_sasl_payloads() -> None:
    """Known secret values and SASL element payloads become ***; short values are left alone."""
    redact = Redactor(["hunter22", "s3cret-key", "ab"])
    text = redact("pw hunter22 key=s3cret-key <auth xmlns='urn:sasl' mechanism='PLAIN'>AGFnZW50AHB3</auth> ab")
    assert text == "pw *** key=*** <auth xmlns='urn:sasl' mechanism='PLAIN'>***</auth> ab"


def test_secrets_of_finds_every_secret_setting() -> None:
    """Passwords, app keys and sink tokens are collected from the settings tree."""
    settings = load_settings(None, xmpp={"password": "pw-1234"},
                             monitor={"apps": [{"app": "a", "key": "key-5678"}]},
                             sidecar={"sinks": [{"type": "webhook", "url": "http://x", "token": "tok-9999"}]})  # fmt: skip
    assert {"pw-1234", "key-5678", "tok-9999"} <= set(secrets_of(settings))


def run_env(server: ProsodyServer, db: Path, jid: str, password: str, apps: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XMPPMON_", "NOTIFY_", "WATCHDOG_"))}
    env.update({
        "XMPPMON_XMPP__JID": jid, "XMPPMON_XMPP__PASSWORD": password,
        "XMPPMON_XMPP__HOST": "127.0.0.1", "XMPPMON_XMPP__PORT": str(server.c2s_port),
        "XMPPMON_XMPP__CA_FILE": str(server.ca_file), "XMPPMON_MONITOR__JID": server.component,
        "XMPPMON_MONITOR__APPS": apps, "XMPPMON_STORE__PATH": str(db),
        "XMPPMON_RECONNECT__INITIAL": "0.2", "XMPPMON_RECONNECT__MAXIMUM": "0.5",
        "XMPPMON_LOG__LEVEL": "DEBUG", **extra,
    })  # fmt: skip
    return env


@pytest.mark.prosody
async def test_a_real_agent_never_logs_a_secret(prosody: ProsodyServer, tmp_path: Path) -> None:
    """At DEBUG, with a refused password and refused subscriptions, no password or API key reaches the output."""
    jid, password = new_account(prosody)
    wrong_password = "wrong-pass-Zq81"
    keys = ["demo-wrong-key-5521", "billing-key-7734"]
    apps = orjson.dumps([{"app": "demo", "key": keys[0]}, {"app": "billing", "key": keys[1]}]).decode()

    # 1. A wrong password: the server refuses it, again and again.
    out1 = tmp_path / "wrong.log"
    with open(out1, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run"], stdout=f, stderr=subprocess.STDOUT,
                                env=run_env(prosody, tmp_path / "a.db", jid, wrong_password, apps))  # fmt: skip
    try:
        await wait_until(lambda: out1.read_text().count("refused the password") >= 1, 20, "auth failure")
        await wait_until(lambda: "<auth" in out1.read_text(), 5, "the SASL exchange in the DEBUG log")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0

    # 2. The right password, but the Monitor API refuses both apps; JSON lines this time.
    db, out2 = tmp_path / "b.db", tmp_path / "refused.log"
    options = emulator_options(prosody, apps={"demo": "demo-key", "billing": keys[1]}, refuse={"billing": 402})
    stop = asyncio.Event()
    async with running(emulator.run(options, stop)):
        with open(out2, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-m", "agent", "run"], stdout=f, stderr=subprocess.STDOUT,
                                    env=run_env(prosody, db, jid, password, apps, XMPPMON_LOG__JSON="true"))  # fmt: skip
        try:
            subs = await wait_until(lambda: agent_state(db, "subscriptions"), 20, "subscription outcomes")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 15) == 0
            stop.set()
    assert "401" in subs and "402" in subs

    text1, text2 = out1.read_text(), out2.read_text()
    for secret in (wrong_password, password, *keys):
        assert secret not in text1 and secret not in text2, f"{secret!r} was logged"
    assert "subscribe" in text2  # the stanzas carrying the keys were logged, redacted
    records = [orjson.loads(line) for line in text2.splitlines() if line.strip()]
    assert all({"level", "component", "message"} <= set(r) for r in records)
