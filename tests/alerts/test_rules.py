"""Alert rules in the store's transaction: storms, thresholds, resolution, damping, session health."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiosqlite
import pytest

from agent.alerts import CATALOGUE, CONDITION_CODES, AlertRules, Observation, classify
from agent.config import AlertRule, AlertSettings, StoreSettings
from agent.events import parse_event
from agent.store import Store
from agent.store.alerts import apply_rules
from agent.store.connection import migrate


def api_event(n: int, status: int, app: str = "demo", api: str = "reach", ts: str = "2026-11-22T10:00:00.000Z"):
    text = json.dumps({"api": api, "method": "GET", "path": "/x", "status": status})
    return parse_event({"id": f"e-{app}-{n}", "kind": "api", "app": app, "ts": ts}, text, 65536)


def rows(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def open_store(tmp_path: Path, **rules: AlertRule) -> Store:
    return await Store.open(StoreSettings(path=tmp_path / "m.db", flush_ms=2), AlertSettings(rules=rules))


async def test_storm_of_10000_identical_504s_is_one_alert_and_one_notification(tmp_path: Path) -> None:
    """10,000 identical 504 api events give one firing alert with count 10,000 and one notification."""
    store = await open_store(tmp_path)
    for start in range(0, 10_000, 1000):
        store.submit_events([api_event(n, 504) for n in range(start, start + 1000)], "r")
    await store.barrier()
    await store.close()
    path = tmp_path / "m.db"
    assert rows(path, "SELECT state, count, severity, code FROM alerts") == [("firing", 10_000, "warning", "504")]
    notes = rows(path, "SELECT transition, key, alert FROM notifications")
    assert [n[0] for n in notes] == ["firing"]
    assert json.loads(notes[0][2])["advice"] == "spread calls out over time"


async def test_auth_fires_on_first_401_and_a_later_success_resolves(tmp_path: Path) -> None:
    """A single 401 fires at once (critical); a 200 on the same app and api resolves it."""
    store = await open_store(tmp_path, auth=AlertRule(resolve_hold_seconds=0))
    store.submit_events([api_event(1, 401)], "r")
    await store.barrier()
    store.submit_events([api_event(2, 200)], "r")
    await store.barrier()
    await store.close()
    path = tmp_path / "m.db"
    assert rows(path, "SELECT state, severity FROM alerts") == [("resolved", "critical")]
    notes = rows(path, "SELECT transition, key FROM notifications ORDER BY id")
    assert [n[0] for n in notes] == ["firing", "resolved"]
    assert len({n[1] for n in notes}) == 2


async def test_timeouts_fire_only_at_threshold_and_success_during_hold_is_damped(tmp_path: Path) -> None:
    """Two 504s stay pending, the third fires; a success right after a failure does not resolve."""
    store = await open_store(tmp_path)
    for n in range(2):
        store.submit_events([api_event(n, 504)], "r")
        await store.barrier()
    path = tmp_path / "m.db"
    assert rows(path, "SELECT state FROM alerts") == [("pending",)]
    store.submit_events([api_event(3, 504), api_event(4, 200)], "r")
    await store.barrier()
    await store.close()
    assert rows(path, "SELECT state, count FROM alerts") == [("firing", 3)]
    assert rows(path, "SELECT transition FROM notifications") == [("firing",)]


async def test_redelivered_api_events_are_not_counted_twice(tmp_path: Path) -> None:
    """Events the server sends again after a resume count once in the alert, as in api_calls."""
    store = await open_store(tmp_path)
    batch = [api_event(n, 504) for n in range(5)]
    store.submit_events(batch, "r")
    await store.barrier()
    store.submit_events([*batch, api_event(9, 504)], "r")
    await store.barrier()
    await store.close()
    path = tmp_path / "m.db"
    assert rows(path, "SELECT count(*) FROM api_calls") == [(6,)]
    assert rows(path, "SELECT count FROM alerts") == [(6,)]


async def test_engine_repeats_resolves_when_quiet_and_counts_flaps(tmp_path: Path) -> None:
    """While firing it repeats after repeat_seconds, resolves after quiet_seconds, and re-firing soon is a flap."""
    settings = AlertSettings(
        rules={"timeout": AlertRule(threshold=1, repeat_seconds=100, quiet_seconds=300)}, sweep_seconds=1
    )
    engine = AlertRules(settings, frozenset({"api"}))
    async with aiosqlite.connect(tmp_path / "e.db", isolation_level=None) as conn:
        await migrate(conn)
        t = 1_000_000.0
        for dt in (0, 50, 120, 130):
            await apply_rules(conn, engine, {("a", "x", 504): 1}, now=t + dt)  # type: ignore[arg-type]
        await apply_rules(conn, engine, None, now=t + 130 + 301)  # quiet: resolved
        await apply_rules(conn, engine, {("a", "x", 504): 1}, now=t + 500)  # re-fires within flap_seconds
        transitions = [r[0] for r in await conn.execute_fetchall("SELECT transition FROM notifications ORDER BY id")]
        alert = json.loads((await conn.execute_fetchall("SELECT alert FROM notifications ORDER BY id DESC"))[0][0])
    assert transitions == ["firing", "repeat", "resolved", "firing"]
    assert alert["flapping"] is True and alert["flaps"] == 1


async def test_session_health_observations(tmp_path: Path) -> None:
    """Disconnection fires only after disconnected_after_seconds; reconnecting resolves; refusals fire per app."""
    engine = AlertRules(
        AlertSettings(disconnected_after_seconds=60, sweep_seconds=1), frozenset({"session", "subscription"})
    )
    async with aiosqlite.connect(tmp_path / "e.db", isolation_level=None) as conn:
        await migrate(conn)
        t = 2_000_000.0
        engine.observe(Observation("session", "disconnected", detail="connection reset"))
        engine.observe(Observation("subscription", CONDITION_CODES["not-authorized"], app="shop"))
        await apply_rules(conn, engine, now=t)
        await apply_rules(conn, engine, now=t + 30)
        states = dict(await conn.execute_fetchall("SELECT code, state FROM alerts"))
        assert states == {"disconnected": "pending", "401": "firing"}
        await apply_rules(conn, engine, now=t + 61)
        engine.observe(Observation("session", "up", ok=True))
        await apply_rules(conn, engine, now=t + 90)
        notes = await conn.execute_fetchall(
            "SELECT a.code, n.transition FROM notifications n JOIN alerts a ON a.id = n.alert_id ORDER BY n.id"
        )
    assert notes == [("401", "firing"), ("disconnected", "firing"), ("disconnected", "resolved")]


def test_catalogue_covers_design_codes_and_conditions() -> None:
    """Every status of DESIGN §4 is in the catalogue with a class, and XEP-0086 conditions map to codes."""
    for code in (
        "200",
        "201",
        "207",
        "400",
        "401",
        "402",
        "403",
        "404",
        "405",
        "409",
        "413",
        "429",
        "500",
        "503",
        "504",
    ):
        assert CATALOGUE[code].advice
    assert "SDK key" in CATALOGUE["401"].advice
    assert CONDITION_CODES["payment-required"] == "402"
    assert classify("418").cls == "client" and classify("502").cls == "server"


async def test_cli_alerts_lists_firing_and_all(tmp_path: Path) -> None:
    """``xmppmon alerts`` shows firing alerts read-only, and ``--all`` includes resolved ones."""
    store = await open_store(tmp_path, auth=AlertRule(resolve_hold_seconds=0))
    store.submit_events([api_event(1, 402, app="billing-app"), api_event(2, 401)], "r")
    await store.barrier()
    store.submit_events([api_event(3, 200)], "r")
    await store.barrier()
    await store.close()
    run = [sys.executable, "-m", "agent", "alerts", "--database", str(tmp_path / "m.db"), "--json"]
    out = subprocess.run(run, capture_output=True, text=True, check=True, timeout=30).stdout
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(a["app"], a["code"], a["state"]) for a in listed] == [
        ("billing-app", "402", "firing"),
        ("demo", "401", "resolved"),
    ]
    out = subprocess.run([*run, "--all"], capture_output=True, text=True, check=True, timeout=30).stdout
    assert len(out.splitlines()) == 2


@pytest.mark.parametrize("code", ["401", "402", "403"])
def test_auth_billing_forbidden_default_to_first_occurrence(code: str) -> None:
    """Auth, billing and forbidden fire on the first occurrence by default."""
    engine = AlertRules(AlertSettings(), frozenset({"api"}))
    assert engine.rules[classify(code).cls].threshold == 1


def test_rules_are_pure_observations_in_transitions_out() -> None:
    """The rules run with no database: a 401 fires at once, a success resolves it, each as a transition."""
    from collections import Counter

    rules = AlertRules(AlertSettings(rules={"auth": AlertRule(resolve_hold_seconds=0)}), frozenset({"api"}))
    rules.load([])
    assert rules.needs(Counter({("shop", "push", 401): 2})) == {("api", "shop", "401", "push")}
    fired = rules.evaluate(Counter({("shop", "push", 401): 2}), {}, now=100.0)
    assert [(t.transition, t.alert.count) for t in fired.transitions] == [("firing", 2)]
    assert [a.state for a in fired.dirty] == ["firing"]
    resolved = rules.evaluate(Counter({("shop", "push", 200): 1}), {}, now=200.0)
    assert [(t.transition, t.snapshot["reason"]) for t in resolved.transitions] == [("resolved", "ok")]
    assert rules.notifications == 2


class _ObservingConnection:
    """The real connection, whose first read of one alert queues an observation: the session does
    that while the writer awaits its reads (a ping timeout at that moment)."""

    def __init__(self, conn: aiosqlite.Connection, engine: AlertRules, observation: Observation) -> None:
        self.conn, self.engine, self.observation = conn, engine, observation

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)

    async def execute_fetchall(self, sql: str, params: object = ()) -> object:
        rows = await self.conn.execute_fetchall(sql, params)  # type: ignore[arg-type]
        if self.observation is not None and "WHERE source = ?" in sql:
            self.engine.observe(self.observation)
            self.observation = None  # type: ignore[assignment]
        return rows


async def test_an_observation_queued_while_the_rules_read_waits_for_the_next_evaluation(tmp_path: Path) -> None:
    """An observation queued between needs() and evaluate() was evaluated without its stored row: a
    resolved alert was inserted a second time ('UNIQUE constraint failed: alerts...'), the writer's
    commit failed and the store raised store_failing. It now waits for the next evaluation, which
    reads its row first: one alert row, fired again."""
    settings = AlertSettings(sweep_seconds=1, rules={"auth": AlertRule(resolve_hold_seconds=0)})
    engine = AlertRules(settings, frozenset({"session", "subscription"}))
    async with aiosqlite.connect(tmp_path / "e.db", isolation_level=None) as conn:
        await migrate(conn)
        t = 3_000_000.0
        engine.observe(Observation("subscription", "401", app="shop"))
        await apply_rules(conn, engine, now=t)
        engine.observe(Observation("subscription", "ok", app="shop", ok=True))
        for dt in (1, 400, 800):  # resolved, then forgotten by the cache
            await apply_rules(conn, engine, now=t + dt)
        assert await conn.execute_fetchall("SELECT state FROM alerts") == [("resolved",)]
        engine.observe(Observation("subscription", "403", app="other"))  # a read happens for this one...
        racing = _ObservingConnection(conn, engine, Observation("subscription", "401", app="shop"))
        await conn.execute("BEGIN")
        await apply_rules(racing, engine, now=t + 900)  # type: ignore[arg-type]  # ...during which the 401 comes
        engine.committed()
        await conn.execute("COMMIT")
        await apply_rules(conn, engine, now=t + 901)
        states = sorted(await conn.execute_fetchall("SELECT app, code, state FROM alerts"))
    assert states == [("other", "403", "firing"), ("shop", "401", "firing")]
