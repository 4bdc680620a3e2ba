"""Schema drift on a real agent process (Prosody, a raw component as the service): each accepted shape, each refusal."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agent.lab.prosody import ProsodyServer

from ..agentproc import AgentProcess
from ..conftest import agent_env, agent_state, db_value, new_account, wait_until
from .test_hostile import RawComponent, event, message

pytestmark = [pytest.mark.prosody, pytest.mark.timeout(180)]


def table(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def push(event_id: str, device: str, action: object) -> str:
    return event(event_id, json.dumps({"device_id": device, "campaign_id": "c-1", "action": action}), kind="push")


def tag(event_id: str, payload: dict[str, object]) -> str:
    return event(event_id, json.dumps(payload), kind="tag")


async def start(agent: AgentProcess, db: Path) -> None:
    agent.start()
    await wait_until(lambda: (agent_state(db, "session") or "").startswith("connected"), 30, "connected")


async def test_drift_is_stored_counted_and_alerted_once(prosody: ProsodyServer, tmp_path: Path) -> None:
    """An unknown push action and a non-scalar tag value are stored as received, counted per kind.field and alerted
    once per new value (not again after a restart); a tags map writes a row per name; only what cannot be keyed or
    stored is quarantined (no id, bad JSON, wrong ts, no device_id, no tag name)."""
    db, account = tmp_path / "m.db", new_account(prosody)
    agent = AgentProcess(agent_env(prosody, db, account), tmp_path / "agent.log")
    raw = None
    try:
        await start(agent, db)
        raw = RawComponent(prosody)
        to = account[0]
        raw.send(message(
            to,
            push("p1", "d1", "clicked"), push("p2", "d2", "clicked"), push("p3", "d3", "exited"),
            tag("t1", {"device_id": "d1", "tags": {"plan": "gold", "tier": "2"}}),
            tag("t2", {"device_id": "d2", "name": "prefs", "value": {"dark": True}}),
            tag("t3", {"device_id": "d3", "name": "plan", "value": "silver"}),
            event("x1", json.dumps({"device_id": "d"}), id=None),
            event("x2", "{not json"),
            event("x3", json.dumps({"device_id": "d"}), ts="1732269600"),
            event("x4", json.dumps({"session_id": "s"})),
            tag("x5", {"device_id": "d4", "value": 1}),
            push("x6", "d5", 7),
        ))  # fmt: skip
        await wait_until(lambda: db_value(db, "SELECT count(*) FROM quarantine") == 6, what="quarantine")
        await wait_until(lambda: db_value(db, "SELECT count(*) FROM tags") == 4, what="tags")
        assert table(db, "SELECT device_id, action FROM push_feedback ORDER BY device_id") == [
            ("d1", "clicked"), ("d2", "clicked"), ("d3", "exited")]  # fmt: skip
        assert table(db, "SELECT device_id, name, value FROM tags ORDER BY device_id, name") == [
            ("d1", "plan", '"gold"'), ("d1", "tier", '"2"'), ("d2", "prefs", '{"dark":true}'), ("d3", "plan", '"silver"')
        ]  # fmt: skip
        reasons = " | ".join(str(r[0]) for r in table(db, "SELECT reason FROM quarantine ORDER BY id"))
        for expected in ("attribute id is missing", "not valid JSON", "ts is not an RFC 3339", "string device_id",
                         "name or a tags object", "string action"):  # fmt: skip
            assert expected in reasons, (expected, reasons)
        await wait_until(lambda: db_value(db, "SELECT count(*) FROM notifications") == 2, what="two alerts")
        assert table(db, "SELECT api, state, severity, count FROM alerts WHERE code = 'schema_drift' ORDER BY api") == [
            ("push.action=clicked", "firing", "warning", 1), ("tag.value=object", "firing", "warning", 1)]  # fmt: skip
        assert agent.stop() == 0
        assert "schema drift: push events carry action 'clicked'" in agent.text()

        await start(agent, db)
        raw.close()
        raw = RawComponent(prosody)
        raw.send(message(to, push("p4", "d4", "clicked"), push("p5", "d5", "tapped")))
        await wait_until(lambda: db_value(db, "SELECT count(*) FROM push_feedback") == 5, what="more pushes")
        await wait_until(lambda: db_value(db, "SELECT count(*) FROM notifications") == 3, what="tapped alert")
        assert agent.stop() == 0
    finally:
        if raw is not None:
            raw.close()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(10)
    counters = dict(
        table(db, "SELECT name, value FROM counters WHERE name LIKE 'schema_drift:%' OR name = 'quarantined'")
    )
    assert counters == {"schema_drift:push.action": 4, "schema_drift:tag.value": 1, "quarantined": 6}
    assert table(db, "SELECT value, count FROM schema_drift ORDER BY value") == [
        ("clicked", 3), ("object", 1), ("tapped", 1)]  # fmt: skip
    assert table(db, "SELECT api FROM alerts WHERE code = 'schema_drift' ORDER BY api") == [
        ("push.action=clicked",), ("push.action=tapped",), ("tag.value=object",)]  # fmt: skip
    assert table(db, "SELECT count(*) FROM events") == [(0,)]
    assert db_value(db, "PRAGMA integrity_check") == "ok"
