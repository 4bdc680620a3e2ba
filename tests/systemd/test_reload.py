"""SIGHUP (``systemctl reload``) on a real ``xmppmon run`` process with a TOML file, against Prosody: the log
level and the alert rules change in place, a new account is "needs restart", a bad file is refused in one line,
and systemd hears RELOADING=1 then READY=1 on a real AF_UNIX notify socket."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.lab import emulator
from agent.lab.prosody import ProsodyServer

from ..conftest import db_value, emulator_options, new_account, wait_until
from . import test_notify
from .test_notify import NotifySocket, stop_agent

notify, processes = test_notify.notify, test_notify.processes  # the fixtures, shared

XMPPMON = [sys.executable, "-m", "agent"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(sections: dict[str, Any], prefix: str = "") -> str:
    """A TOML document: nested dicts become [tables], lists of dicts inline tables."""
    plain = [f"{k} = {toml_value(v)}" for k, v in sections.items() if not isinstance(v, dict)]
    text = (f"[{prefix}]\n" if prefix and plain else "") + "".join(line + "\n" for line in plain)
    for key, value in sections.items():
        if isinstance(value, dict):
            text += to_toml(value, f"{prefix}.{key}" if prefix else key)
    return text


def write_config(path: Path, sections: dict[str, Any]) -> None:
    """Replace the file in one step, as an editor's save or a configuration manager would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(to_toml(sections))
    tmp.replace(path)


def clean_env(sock: NotifySocket | None = None) -> dict[str, str]:
    """The test's environment without any XMPPMON_ setting: everything comes from the file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XMPPMON_", "NOTIFY_", "WATCHDOG_"))}
    if sock is not None:
        env["NOTIFY_SOCKET"] = sock.path
    return env


def agent_config(
    server: ProsodyServer, db: Path, account: tuple[str, str], **sections: dict[str, Any]
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "xmpp": {"jid": account[0], "password": account[1], "host": "127.0.0.1", "port": server.c2s_port,
                 "ca_file": server.ca_file, "negotiation_timeout": 5},
        "monitor": {"jid": server.component, "apps": [{"app": "demo", "key": "demo-key"}]},
        "keepalive": {"interval": 30, "timeout": 5},
        "reconnect": {"initial": 0.2, "maximum": 1.0},
        "store": {"path": db, "flush_ms": 5, "heartbeat_seconds": 1},
        "log": {"level": "INFO"},
    }  # fmt: skip
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def start(command: str, config: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([*XMPPMON, "--config", str(config), command], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def text(log: Path) -> str:
    return log.read_text(errors="replace")


def lines_after(log: Path, marker: str) -> list[str]:
    """The log's lines after the last line containing ``marker``."""
    lines = text(log).splitlines()
    last = max((i for i, line in enumerate(lines) if marker in line), default=-1)
    return lines[last + 1 :]


async def hangup(
    proc: subprocess.Popen[bytes], log: Path, expect: str, notify: NotifySocket | None = None
) -> tuple[str, str]:
    """SIGHUP; then the first new log line containing ``expect`` and, with ``notify``, the STATUS= of the READY=1
    that follows one RELOADING=1 (whose MONOTONIC_USEC falls between the signal and now)."""
    seen = len(text(log).splitlines())
    since = time.monotonic()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    proc.send_signal(signal.SIGHUP)
    line = await wait_until(
        lambda: next((x for x in text(log).splitlines()[seen:] if expect in x), None), 20, f"{expect!r} in the log"
    )
    if notify is None:
        return str(line), ""
    ready = await wait_until(lambda: notify.with_key("READY", since), 10, "READY=1 after the reload")
    reloading = notify.with_key("RELOADING", since)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert len(reloading) == 1 and reloading[0]["RELOADING"] == "1", notify.messages
    assert before <= int(reloading[0]["MONOTONIC_USEC"]) <= after
    order = [m for _, m in notify.messages if "RELOADING" in m or "READY" in m][-2:]
    assert order == [reloading[0], ready[0]], "RELOADING=1 must come before READY=1"
    assert ready[0]["READY"] == "1"
    return str(line), ready[0]["STATUS"]


async def send(server: ProsodyServer, jid: str, count: int, seed: int, **options: Any) -> list[str]:
    """``count`` events (history, unless ``kinds`` says otherwise) from the emulated Monitor API to ``jid``; their ids."""
    sent = Path(f"/tmp/xmppmon-reload-sent-{os.getpid()}-{seed}.log")
    options.setdefault("kinds", ("event",))
    try:
        await emulator.run(emulator_options(server, to=[jid], count=count, batch=10, rate=0, event_log=sent,
                                            seed=seed, **options))  # fmt: skip
        return [line.split("\t")[0] for line in sent.read_text().splitlines()]
    finally:
        sent.unlink(missing_ok=True)


def stored(db: Path) -> int:
    return int(db_value(db, "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM api_calls)") or 0)


@pytest.mark.prosody
async def test_sighup_applies_the_log_level_reports_a_new_account_and_refuses_a_bad_file(
    prosody: ProsodyServer, tmp_path: Path, notify: NotifySocket, processes: list[subprocess.Popen[bytes]]
) -> None:
    """INFO to DEBUG in place; a new JID is "needs restart" and the session stays on the old one; an invalid file
    is one refusal line, and DEBUG (the running level) stays; systemd sees RELOADING=1, READY=1 each time."""
    db, log, config = tmp_path / "m.db", tmp_path / "agent.log", tmp_path / "agent.toml"
    account = new_account(prosody)
    settings = agent_config(prosody, db, account)
    write_config(config, settings)
    proc = start("run", config, log, clean_env(notify))
    processes.append(proc)
    await wait_until(lambda: notify.with_key("READY"), 20, "READY=1")
    ids = await send(prosody, account[0], 20, seed=1)
    await wait_until(lambda: stored(db) >= len(ids), 20, "the first events stored")
    assert not re.search(r"^DEBUG ", text(log), re.M), "DEBUG lines at level INFO"

    # 1. The log level, in place: slixmpp's DEBUG lines show each stanza received.
    settings["log"]["level"] = "DEBUG"
    write_config(config, settings)
    _, status = await hangup(proc, log, "settings reloaded", notify)
    assert status == "reloaded: applied log.level"
    ids = await send(prosody, account[0], 20, seed=2)
    await wait_until(lambda: ids[-1] in "\n".join(lines_after(log, "settings reloaded")), 20, "a DEBUG line per stanza")
    assert any(line.startswith("DEBUG ") for line in lines_after(log, "settings reloaded"))

    # 2. Another account: a new session would be needed. Logged, left alone: events to the old JID still arrive.
    other = new_account(prosody)
    settings["xmpp"].update(jid=other[0], password=other[1])
    write_config(config, settings)
    line, status = await hangup(proc, log, "needs restart", notify)
    assert line.startswith("WARNING") and "needs restart: xmpp.jid, xmpp.password" in line
    assert other[1] not in text(log)
    assert status == "reloaded: nothing to apply; needs restart: xmpp.jid, xmpp.password"
    before = stored(db)
    ids = await send(prosody, account[0], 20, seed=3)
    await wait_until(lambda: stored(db) >= before + len(ids), 20, "events to the running account")
    assert proc.poll() is None

    # 3. An invalid file (a value the settings refuse, and a TOML syntax error): one line each, nothing changes.
    settings["log"]["level"] = "WARNING"
    settings["keepalive"]["interval"] = 900  # over the Monitor API's 10-minute idle limit
    write_config(config, settings)
    _, status = await hangup(proc, log, "reload refused", notify)
    assert status.startswith("reload refused, running settings kept: invalid setting XMPPMON_KEEPALIVE__INTERVAL")
    config.write_text('[log]\nlevel = "WARNING"\n[xmpp\n')
    _, status = await hangup(proc, log, "cannot read settings", notify)
    assert status.startswith("reload refused, running settings kept: cannot read settings from")
    refusals = [x for x in text(log).splitlines() if "reload refused" in x]
    assert len(refusals) == 2 and all(x.startswith("ERROR") for x in refusals), refusals
    assert "invalid setting XMPPMON_KEEPALIVE__INTERVAL: must be under 600 s" in refusals[0]
    assert "the running settings stay" in refusals[1]
    # Still DEBUG (the running level, not the refused WARNING), still storing, no alert from any of this.
    before = stored(db)
    ids = await send(prosody, account[0], 20, seed=4)
    await wait_until(lambda: stored(db) >= before + len(ids), 20, "events after the refusals")
    assert any(ids[-1] in x and x.startswith("DEBUG ") for x in lines_after(log, "reload refused"))
    assert proc.poll() is None
    assert db_value(db, "SELECT count(*) FROM quarantine") == 0
    # The only alerts: the subscription refused while the emulator is not connected (it connects per send).
    assert {source for (source,) in query(db, "SELECT source FROM alerts")} <= {"subscription"}
    assert await asyncio.to_thread(stop_agent, proc) == 0, text(log)[-3000:]
    assert len(notify.with_key("RELOADING")) == 4


@pytest.mark.prosody
async def test_sighup_applies_a_new_alert_rule_to_the_alerts_already_pending(
    prosody: ProsodyServer, tmp_path: Path, notify: NotifySocket, processes: list[subprocess.Popen[bytes]]
) -> None:
    """504s pending under a threshold of 1000 fire once a reload lowers it to 1: the same alert rows (the store's
    cached active alerts kept), their counts going on, one firing notification each."""
    db, log, config = tmp_path / "m.db", tmp_path / "agent.log", tmp_path / "agent.toml"
    account = new_account(prosody)
    settings = agent_config(prosody, db, account, alerts={"rules": {"timeout": {"threshold": 1000,
                                                                                "window_seconds": 3600}}})  # fmt: skip
    write_config(config, settings)
    proc = start("run", config, log, clean_env(notify))
    processes.append(proc)
    await wait_until(lambda: notify.with_key("READY"), 20, "READY=1")
    ids = await send(prosody, account[0], 30, seed=11, kinds=("api",), api_status=504)
    await wait_until(lambda: stored(db) >= len(ids), 20, "the first 504s stored")
    pending = dict(query(db, "SELECT api, id FROM alerts WHERE source = 'api' AND code = '504' AND state = 'pending'"))
    assert pending and db_value(db, "SELECT count(*) FROM notifications") == 0

    settings["alerts"]["rules"]["timeout"]["threshold"] = 1
    write_config(config, settings)
    _, status = await hangup(proc, log, "settings reloaded", notify)
    assert status == "reloaded: applied alerts.rules"
    more = await send(prosody, account[0], 30, seed=12, kinds=("api",), api_status=504)
    await wait_until(lambda: stored(db) >= len(ids) + len(more), 20, "the next 504s stored")
    await wait_until(
        lambda: db_value(db, "SELECT count(*) FROM alerts WHERE source = 'api' AND state = 'firing'"),
        10,
        "a firing alert",
    )
    calls = dict(query(db, "SELECT api, count(*) FROM api_calls WHERE status = 504 GROUP BY api"))
    alerts = {api: (alert_id, state, count) for api, alert_id, state, count in
              query(db, "SELECT api, id, state, count FROM alerts WHERE source = 'api' AND code = '504'")}  # fmt: skip
    fired_again = [api for api in pending if alerts[api][1] == "firing"]
    assert fired_again, f"no pending alert fired after the reload: {alerts}"
    for api in fired_again:
        assert alerts[api][0] == pending[api], "a new alert row: the pending one was lost"
        assert alerts[api][2] == calls[api], "the count did not go on from before the reload"
    # (a refused subscription is a 504 too, while the emulator is away: source 'subscription', not counted here)
    firing = query(db, "SELECT a.api, n.transition FROM notifications n JOIN alerts a ON a.id = n.alert_id"
                   " WHERE a.source = 'api'")  # fmt: skip
    assert sorted(firing) == sorted((api, "firing") for api, (_, state, _) in alerts.items() if state == "firing")
    assert db_value(db, "SELECT count(*) FROM quarantine") == 0
    assert await asyncio.to_thread(stop_agent, proc) == 0, text(log)[-3000:]


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
