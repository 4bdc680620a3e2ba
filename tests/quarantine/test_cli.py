"""xmppmon quarantine list/show/replay on a real database: what moves, what stays and why, nothing twice."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import orjson

from agent.config import StoreSettings
from agent.events import parse_event
from agent.quarantine import reparse
from agent.store import Quarantined, Store
from plugins.monitor_events.plugin import _raw

NS = "urn:xmppmon:monitor:1"
TS = "2026-11-22T10:00:00.000Z"


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("XMPPMON_")} | env
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          timeout=60, check=False, env=environ)  # fmt: skip


def raw_event(event_id: str, kind: str, payload: object, **attrs: str) -> str:
    """The raw text the plugin stores for an <event/>: serialised by ElementTree, tail and all."""
    text = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    element = ET.Element(f"{{{NS}}}event", {"id": event_id, "kind": kind, "app": "demo", "ts": TS} | attrs)
    element.text, element.tail = text, "\n  "
    return _raw(element)


def counters(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT name, value FROM counters").fetchall())
    finally:
        conn.close()


def value(db: Path, sql: str) -> object:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


async def quarantined_database(tmp_path: Path) -> Path:
    db = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=db, flush_ms=5))
    big = {"device_id": "d-1", "pad": "x" * 3000}
    entries = [
        ("payload is larger than 1024 bytes", raw_event("big-1", "activity", big)),
        ("payload is larger than 1024 bytes", raw_event("big-2", "api", {"api": "reach", "status": 503, "pad": "x" * 3000})),
        ("payload is larger than 1024 bytes", raw_event("big-3", "tag", {"device_id": "d-1", "tags": {"plan": "gold", "pad": "x" * 3000}})),
        ("push payload action must be one of ['actioned', 'displayed', 'exited', 'received']",
         raw_event("old-push", "push", {"device_id": "d-1", "campaign_id": "c", "action": "clicked"})),
        ("payload is larger than 1024 bytes", raw_event("dup-1", "activity", {"device_id": "d-2", "pad": "y" * 3000})),
        ("payload is larger than 65536 bytes", raw_event("huge", "activity", {"device_id": "d", "pad": "z" * 70_000})),
        ("payload is not valid JSON: x", raw_event("bad-json", "activity", "{not json")),
        ("payload is larger than 65536 bytes", raw_event("cut", "activity", {"device_id": "d", "pad": "z" * 300_000})),
    ]  # fmt: skip
    for reason, raw in entries:
        event_id = raw.split('id="')[1].split('"')[0]
        store.submit_quarantine(
            Quarantined(reason, raw, "monitor.localhost", event_id, "demo", "2026-11-22T10:00:01.000Z")
        )
    # dup-1 was also delivered again later, under a limit that let it through.
    dup = parse_event({"id": "dup-1", "kind": "activity", "app": "demo", "ts": TS},
                      orjson.dumps({"device_id": "d-2", "pad": "y" * 3000}).decode(), 65536)  # fmt: skip
    store.submit_events([dup], "2026-11-22T10:00:02.000Z")
    await store.barrier()
    await store.close()
    return db


def test_reparse_reads_back_what_the_plugin_stored() -> None:
    """A raw text round-trips to the same event; a cut one and a foreign element are refused with a reason."""
    raw = raw_event("e1", "activity", {"device_id": "d"})
    event = reparse(raw, NS, 65536)
    assert (event.event_id, event.kind, event.payload) == ("e1", "activity", {"device_id": "d"})
    cut = raw_event("e2", "activity", {"device_id": "d", "pad": "x" * 300_000})
    for bad, why in ((cut, "was cut"), ("<x/>", "not an <event/>"), ("<event", "not XML")):
        try:
            reparse(bad, NS, 10**6)
        except ValueError as exc:
            assert why in str(exc)
        else:
            raise AssertionError(f"{bad[:20]} parsed")


async def test_list_show_dry_run_replay_and_replay_again(tmp_path: Path) -> None:
    """list filters by reason and time; show prints the raw text; a dry run changes nothing; replay under a raised
    limit moves the now-valid entries once (a duplicate is not stored twice), keeps the rest with their reason; a
    second replay moves nothing."""
    db = await quarantined_database(tmp_path)
    listed = cli("quarantine", "list", "--database", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 8
    larger = cli("quarantine", "list", "--reason", "LARGER than 1024", "--database", str(db), "--json")
    assert [orjson.loads(line)["event_id"] for line in larger.stdout.splitlines()] == [
        "dup-1",
        "big-3",
        "big-2",
        "big-1",
    ]
    assert "(0 rows)" in cli("quarantine", "list", "--since", "2026-11-23", "--database", str(db)).stdout
    shown = cli("quarantine", "show", "4", "--database", str(db))
    assert "old-push" in shown.stdout and "clicked" in shown.stdout and "reason:" in shown.stdout
    missing = cli("quarantine", "show", "99", "--database", str(db))
    assert missing.returncode == 1 and "no quarantined event 99" in missing.stderr

    before = counters(db)
    dry = cli("quarantine", "replay", "--dry-run", "--database", str(db), XMPPMON_MONITOR__MAX_PAYLOAD_BYTES="65536")
    assert dry.returncode == 0, dry.stderr
    assert "would move 5, would keep 3" in dry.stdout
    assert value(db, "SELECT count(*) FROM quarantine") == 8 and counters(db) == before

    done = cli("quarantine", "replay", "--database", str(db), XMPPMON_MONITOR__MAX_PAYLOAD_BYTES="65536")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "moved 1 (event big-1, activity): stored" in out
    assert "moved 5 (event dup-1, activity): already stored (duplicate)" in out
    assert "kept 6 (event huge): payload is larger than 65536 bytes" in out
    assert "kept 8 (event cut): the raw text was cut" in out
    assert "moved 5 (1 already stored), kept 3" in out
    assert (
        value(db, "SELECT group_concat(event_id, ',') FROM (SELECT event_id FROM events ORDER BY event_id)")
        == "big-1,dup-1"
    )
    assert value(db, "SELECT status FROM api_calls WHERE event_id = 'big-2'") == 503
    assert value(db, "SELECT count(*) FROM tags WHERE event_id = 'big-3'") == 2
    assert value(db, "SELECT action FROM push_feedback") == "clicked"
    assert value(db, "SELECT group_concat(event_id, ',') FROM quarantine") == "huge,bad-json,cut"
    assert value(db, "SELECT value || ':' || count FROM schema_drift") == "clicked:1"
    assert value(db, "SELECT count(*) FROM alerts") == 0  # the agent's writer owns the alerts
    after = counters(db)
    assert after["quarantine_replayed"] == 5 and after["events_duplicate"] == 1
    assert after["schema_drift:push.action"] == 1
    assert after["quarantined"] == 8 and after["events_received"] == 1  # history: unchanged

    again = cli("quarantine", "replay", "--database", str(db), XMPPMON_MONITOR__MAX_PAYLOAD_BYTES="65536")
    assert again.returncode == 0 and "moved 0, kept 3" in again.stdout
    assert counters(db) == after and value(db, "SELECT count(*) FROM events") == 2
    by_id = cli("quarantine", "replay", "--id", "7", "--database", str(db))
    assert "kept 7 (event bad-json): payload is not valid JSON" in by_id.stdout
    both = cli("quarantine", "replay", "--id", "7", "--reason", "x", "--database", str(db))
    assert both.returncode == 1 and "not both" in both.stderr
