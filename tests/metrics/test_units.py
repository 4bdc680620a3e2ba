"""Units of the metrics: quarantine reason classes (Python and SQL agree), health reasons, listen addresses."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from types import SimpleNamespace
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest

from agent.config import load_settings, parse_listen
from agent.events import InvalidEvent, parse_event
from agent.exceptions import ConfigError
from agent.health import Health
from agent.lab.emulator import EmulatorOptions
from agent.lab.emulator.wire import DEFECTS, EventFactory
from agent.lab.net import free_loopback_port
from agent.metrics.http import serve
from agent.metrics.registry import new_registry
from agent.reasons import CLASSES, OTHER, reason_class, reason_class_sql

TS = "2026-11-22T10:00:00.000Z"
#: One input per way agent/events.py refuses an event, with the class it must get.
BAD: list[tuple[dict[str, str], str | None, str]] = [
    ({"kind": "activity", "app": "a", "ts": TS}, '{"device_id":"d"}', "bad_attribute"),  # id missing
    ({"id": "", "kind": "activity", "app": "a", "ts": TS}, '{"device_id":"d"}', "bad_attribute"),
    ({"id": "a b", "kind": "activity", "app": "a", "ts": TS}, '{"device_id":"d"}', "bad_attribute"),
    ({"id": "e", "app": "a", "ts": TS}, '{"device_id":"d"}', "bad_attribute"),  # kind missing
    ({"id": "e", "kind": "telemetry", "app": "a", "ts": TS}, '{"device_id":"d"}', "unknown_kind"),
    ({"id": "e", "kind": "activity", "ts": TS}, '{"device_id":"d"}', "bad_attribute"),  # app missing
    ({"id": "e", "kind": "activity", "app": "a", "ts": "yesterday"}, '{"device_id":"d"}', "bad_timestamp"),
    ({"id": "e", "kind": "activity", "app": "a", "ts": "2026-02-30T10:00:00Z"}, '{"device_id":"d"}', "bad_timestamp"),
    ({"id": "e", "kind": "activity", "app": "a", "ts": TS}, None, "empty_payload"),
    ({"id": "e", "kind": "activity", "app": "a", "ts": TS}, '{"device_id":"' + "x" * 70000 + '"}', "too_large"),
    ({"id": "e", "kind": "activity", "app": "a", "ts": TS}, "{nope", "bad_json"),
    ({"id": "e", "kind": "activity", "app": "a", "ts": TS}, "[1]", "not_object"),
    ({"id": "e", "kind": "activity", "app": "a", "ts": TS}, "{}", "bad_payload"),
    ({"id": "e", "kind": "activity", "app": "a", "ts": TS}, '{"device_id":"' + "x" * 600 + '"}', "bad_payload"),
    ({"id": "e", "kind": "api", "app": "a", "ts": TS}, '{"api":"x","status":"500"}', "bad_payload"),
    ({"id": "e", "kind": "api", "app": "a", "ts": TS}, '{"api":"x","status":200,"latency_ms":-1}', "bad_payload"),
    ({"id": "e", "kind": "api", "app": "a", "ts": TS}, '{"api":"x","status":200,"path":3}', "bad_payload"),
    ({"id": "e", "kind": "token", "app": "a", "ts": TS}, '{"device_id":"d","token":"t","valid":1}', "bad_payload"),
    # An unknown push action or a tag value of another shape is schema drift: stored, not refused.
]  # fmt: skip


def refusal(attrs: dict[str, str], text: str | None) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(attrs, text, 64 * 1024)
    return info.value.reason


def sql_classes(reasons: list[str]) -> list[str]:
    conn = sqlite3.connect(":memory:")
    try:
        return [conn.execute(f"SELECT {reason_class_sql(':r')}", {"r": r}).fetchone()[0] for r in reasons]
    finally:
        conn.close()


def test_every_refusal_has_its_class_in_python_and_in_sql() -> None:
    """Each way events.py refuses an event maps to a short class, and the SQL CASE gives the same one."""
    reasons = [refusal(attrs, text) for attrs, text, _ in BAD]
    assert [reason_class(r) for r in reasons] == [want for *_, want in BAD], reasons
    assert sql_classes(reasons) == [want for *_, want in BAD]
    assert set(CLASSES) - {OTHER} == {want for *_, want in BAD}  # no class is dead


def test_the_emulators_defects_never_fall_into_other() -> None:
    """The emulator's rotation of malformed events (what the integration tests send) all get a real class."""
    factory = EventFactory(EmulatorOptions(seed=3))
    reasons = []
    for _ in DEFECTS:
        _, xml = factory.malformed("demo", TS)
        element = ET.fromstring(xml)
        reasons.append(refusal(dict(element.attrib), element.text))
    assert OTHER not in [reason_class(r) for r in reasons]
    assert sql_classes(reasons) == [reason_class(r) for r in reasons]
    assert reason_class("a plugin's own reason") == OTHER == sql_classes(["a plugin's own reason"])[0]


def fakes(**store: Any) -> tuple[Any, Any]:
    settings = SimpleNamespace(stall_seconds=60.0, heartbeat_seconds=1.0)
    fields = {"healthy": True, "last_error": None, "pending": 0, "write_started": None}
    fields |= {"last_attempt": time.monotonic(), "last_commit": time.monotonic(), "on_commit": [], "settings": settings}
    s = SimpleNamespace(**(fields | store))
    hooks = SimpleNamespace(down=[], failed=[])
    session = SimpleNamespace(connected=asyncio.Event(), hooks=hooks)
    return s, session


def test_health_reasons_name_each_cause() -> None:
    """Session down, failing writes, an idle writer and silence are each one reason; all clear is none."""
    store, session = fakes()
    health = Health(store, session, max_silence=30)
    assert health.reasons() == ["session down: no session yet"]
    session.hooks.failed[0]("cannot connect to 127.0.0.1:5222")
    assert health.reasons() == ["session down: cannot connect to 127.0.0.1:5222"]
    session.connected.set()
    assert health.reasons() == []
    store.healthy, store.last_error = False, "database or disk is full"
    assert health.reasons() == ["writer failing: database or disk is full"]
    store.healthy, store.last_commit = True, time.monotonic() - 61  # past max(4 heartbeats, stall_seconds)
    assert health.reasons() == ["writer idle: no commit for 61 s"]
    store.last_commit, store.write_started = time.monotonic(), time.monotonic() - 61
    assert health.reasons()[0].startswith("writer wedged: a database write has been blocked")
    assert not health.alive() and "blocked" in health.writer.reason
    store.write_started = None
    health.last_event = time.time() - 31
    assert health.reasons()[0].startswith("no event for 31 s")
    store.on_commit[0](SimpleNamespace(counters={"events_received": 3}))
    assert health.reasons() == [] and health.last_event_age() < 1


@pytest.mark.parametrize("text", ["9465", "127.0.0.1:", ":9465", "127.0.0.1:70000", "host:port"])
def test_a_bad_listen_address_is_one_line(text: str) -> None:
    """XMPPMON_METRICS__LISTEN and XMPPMON_SIDECAR__METRICS_LISTEN refuse what is not HOST:PORT."""
    with pytest.raises(ConfigError, match=r"XMPPMON_METRICS__LISTEN: .* is not HOST:PORT"):
        load_settings(None, metrics={"listen": text})
    with pytest.raises(ConfigError, match="XMPPMON_SIDECAR__METRICS_LISTEN"):
        load_settings(None, sidecar={"metrics_listen": text})
    assert parse_listen("[::1]:9465") == ("::1", 9465)
    assert load_settings(None).metrics.listen == ""


def test_the_listener_serves_each_path() -> None:
    """/metrics is the exposition format, /healthz 200, /readyz 200 or 503 with the reasons, others 404."""
    reasons: list[str] = []
    listener = serve(f"127.0.0.1:{free_loopback_port()}", new_registry(), lambda: reasons, "TEST")
    try:
        base = f"http://127.0.0.1:{listener.port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").json() == []
        reasons.append("session down: x")
        answer = httpx.get(f"{base}/readyz")
        assert answer.status_code == 503 and answer.json() == ["session down: x"]
        assert httpx.get(f"{base}/metrics").headers["content-type"].startswith("text/plain")
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        listener.close()
