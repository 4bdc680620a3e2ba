"""The agent's /metrics, /healthz and /readyz against a real Prosody and the emulated Monitor API."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.app import run_agent
from agent.events import HISTORY_KINDS, STATE_KINDS
from agent.lab import emulator
from agent.lab.net import free_loopback_port
from agent.lab.prosody import ProsodyServer
from agent.reasons import reason_class_sql

from ..conftest import agent_state, db_value, emulator_options, make_settings, new_account, running, wait_until

pytestmark = pytest.mark.prosody

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def db_rows(db: Path, sql: str) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {str(k): int(v) for k, v in conn.execute(sql)}
    finally:
        conn.close()


def connected(db: Path) -> bool:
    return (agent_state(db, "session") or "").startswith("connected")


async def test_metrics_match_the_database_and_readiness_notices_silence(prosody: ProsodyServer, tmp_path: Path) -> None:
    """After a mixed wave, every counter equals what the database holds, and /readyz turns 503 after max_silence."""
    db, log = tmp_path / "m.db", tmp_path / "sent.log"
    account = new_account(prosody)
    port = free_loopback_port()
    settings = make_settings(
        prosody, db, account, metrics={"listen": f"127.0.0.1:{port}"}, health={"max_silence": 3},
        keepalive={"interval": 0.5, "timeout": 5},
    )  # fmt: skip
    options = emulator_options(
        prosody, to=[account[0]], count=2000, batch=20, rate=0, malformed=0.05, duplicates=0.05,
        event_log=log, seed=13, start_delay=0.3,
    )  # fmt: skip
    stop = asyncio.Event()
    async with running(run_agent(settings, stop)) as agent:
        await wait_until(lambda: connected(db), what="session")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        report = await emulator.run(options)
        expected = report.events_sent + report.duplicates_sent
        await wait_until(
            lambda: db_value(db, "SELECT value FROM counters WHERE name='events_received'") == expected,
            what="every event received",
        )
        await wait_until(lambda: db_value(db, "SELECT count(*) FROM quarantine") == report.malformed_sent, what="q")
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        await wait_until(lambda: value(scrape(port), "xmppmon_ping_rtt_seconds"), what="a ping")
        samples = await asyncio.to_thread(scrape, port)
        # Silence: nothing arrives for more than max_silence seconds.
        silent = await wait_until(
            lambda: (r := httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)).status_code == 503 and r,
            timeout=20, what="readyz 503 after silence",
        )  # fmt: skip
        stop.set()
        await asyncio.wait_for(agent, 15)

    assert ready.status_code == 200 and ready.json() == []
    assert len(silent.json()) == 1 and silent.json()[0].startswith("no event for ")

    history = db_rows(db, "SELECT kind, count(*) FROM events GROUP BY kind")
    assert set(history) == HISTORY_KINDS
    for kind, rows in history.items():
        assert value(samples, "xmppmon_events_committed_total", kind=kind) == rows, kind
    assert value(samples, "xmppmon_events_committed_total", kind="api") == db_value(
        db, "SELECT count(*) FROM api_calls"
    )
    sent = [line.split("\t")[1] for line in log.read_text().splitlines()]
    for kind, table in zip(sorted(STATE_KINDS), ("devices", "push_feedback", "tags", "tokens"), strict=True):
        # One row per key: a newer event of a key updates it (a redelivered copy too), an older one
        # changes nothing; so the keys held <= the rows written <= the events of that kind sent.
        committed = value(samples, "xmppmon_events_committed_total", kind=kind) or 0
        assert db_value(db, f"SELECT count(*) FROM {table}") <= committed, kind
        assert committed <= sent.count(kind) + report.duplicates_sent, kind

    counters = db_rows(db, "SELECT name, value FROM counters")
    assert value(samples, "xmppmon_stanzas_received_total") == counters["stanzas"]
    assert value(samples, "xmppmon_events_duplicate_total") == counters["events_duplicate"] > 0
    assert value(samples, "xmppmon_foreign_stanzas_total") == counters.get("foreign_stanzas", 0)
    classes = db_rows(db, f"SELECT {reason_class_sql()}, count(*) FROM quarantine GROUP BY 1")
    assert {"bad_json", "bad_attribute", "unknown_kind", "too_large", "bad_timestamp", "bad_payload"} <= set(classes)
    for name, rows in classes.items():
        assert value(samples, "xmppmon_quarantined_total", reason=name) == rows, name
    assert value(samples, "xmppmon_quarantined_total", reason="other") == 0

    assert value(samples, "xmppmon_session_up") == 1
    assert 0 < (value(samples, "xmppmon_ping_rtt_seconds") or 0) < 5
    assert value(samples, "xmppmon_writer_backlog") == 0
    stanzas_with_events = value(samples, "xmppmon_commit_seconds_count") or 0
    assert 0 < stanzas_with_events <= counters["stanzas"]
    assert value(samples, "xmppmon_commit_seconds_bucket", le="+Inf") == stanzas_with_events
    firing = db_rows(db, "SELECT severity, count(*) FROM alerts WHERE state = 'firing' GROUP BY severity")
    assert firing.get("critical", 0) > 0  # the emulator's 401/402 answers fire at once
    for severity in ("critical", "warning", "info"):
        assert value(samples, "xmppmon_alerts_firing", severity=severity) == firing.get(severity, 0), severity
    assert 0 <= (value(samples, "xmppmon_last_event_age_seconds") or -1) < 60
    for how in ("resumed", "new", "failed"):
        assert value(samples, "xmppmon_reconnects_total", how=how) == 0


async def test_reconnects_and_readiness_follow_the_session(private_prosody: ProsodyServer, tmp_path: Path) -> None:
    """A frozen server makes /readyz 503 ("session down") and session_up 0; the resumed stream counts how=resumed."""
    server, db = private_prosody, tmp_path / "m.db"
    port = free_loopback_port()
    settings = make_settings(
        server, db, new_account(server), metrics={"listen": f"127.0.0.1:{port}"},
        keepalive={"interval": 0.5, "timeout": 1}, xmpp={"negotiation_timeout": 2},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()
    async with running(run_agent(settings, stop)) as agent:
        await wait_until(lambda: connected(db), what="session")
        server.freeze()
        try:
            await wait_until(lambda: value(scrape(port), "xmppmon_session_up") == 0, what="session_up 0")
            down = httpx.get(f"{url}/readyz", timeout=5)
            # Attempts against the frozen server fail (negotiation timeout) until it thaws.
            await wait_until(
                lambda: (value(scrape(port), "xmppmon_reconnects_total", how="failed") or 0) >= 1, what="failed"
            )
        finally:
            server.thaw()
        await wait_until(lambda: value(scrape(port), "xmppmon_session_up") == 1, timeout=30, what="up again")
        samples = scrape(port)
        up = httpx.get(f"{url}/readyz", timeout=5)
        stop.set()
        await asyncio.wait_for(agent, 15)
    assert down.status_code == 503 and any(r.startswith("session down: ") for r in down.json()), down.text
    assert up.status_code == 200, up.text
    assert value(samples, "xmppmon_reconnects_total", how="resumed") == 1
    assert value(samples, "xmppmon_reconnects_total", how="new") == 0


async def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """XMPPMON_METRICS__LISTEN on a port already taken stops start-up with one line naming the setting."""
    import os
    import socket
    import sys

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XMPPMON_")}
        env |= {
            "XMPPMON_STORE__PATH": str(tmp_path / "m.db"),
            "XMPPMON_METRICS__LISTEN": f"127.0.0.1:{taken.getsockname()[1]}",
            "XMPPMON_XMPP__PORT": str(free_loopback_port()),
            "XMPPMON_XMPP__HOST": "127.0.0.1",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "run", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        taken.close()
    lines = [line for line in err.decode().splitlines() if "XMPPMON_METRICS__LISTEN" in line]
    assert proc.returncode == 2, err.decode()[-2000:]
    assert len(lines) == 1 and "cannot listen on 127.0.0.1:" in lines[0] and "in use" in lines[0], lines
