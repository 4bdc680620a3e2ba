"""Which notifications a sink gets, and in what order: a new sink starts from the open alerts, and per alert
the transitions arrive in order (issue 10, defects 6 and 7), against a real local HTTP server and a real
Alertmanager."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from agent.config import AlertRule, AlertSettings, StoreSettings
from agent.events import parse_event
from agent.store import Store

from ..conftest import wait_until
from . import test_sinks
from .test_extra import sidecar
from .test_webhook import FAST, Recorder, ok, query, settings_for, states

alertmanager = test_sinks.alertmanager  # the real Alertmanager fixture, shared

RULES = AlertSettings(rules={"auth": AlertRule(resolve_hold_seconds=0), "billing": AlertRule(resolve_hold_seconds=0)})


async def commit(path: Path, *calls: tuple[str, int], alerts: AlertSettings = RULES, hold: float = 0.0) -> None:
    """Commit one api event per (app, status) through the agent's store, in order, one batch each."""
    store = await Store.open(StoreSettings(path=path, flush_ms=2, heartbeat_seconds=0.05), alerts)
    try:
        for n, (app, status) in enumerate(calls):
            event = {"id": f"e{time.time_ns()}-{n}", "kind": "api", "app": app, "ts": "2026-11-22T10:00:00.000Z"}
            store.submit_events([parse_event(event, f'{{"api":"reach","status":{status}}}', 65536)], "r")
            await store.barrier()
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:  # let the writer's sweep run (repeats) while the store is open
            await store.barrier()
            await asyncio.sleep(0.05)
    finally:
        await store.close()


def notes(path: Path) -> dict[str, tuple[str, str, str]]:
    """key -> (app, code, transition) of every notification."""
    rows = query(path, "SELECT key, alert, transition FROM notifications ORDER BY id")
    return {k: (json.loads(a)["app"], json.loads(a)["code"], t) for k, a, t in rows}


def key_of(path: Path, app: str, transition: str) -> str:
    return next(k for k, (a, _c, t) in notes(path).items() if a == app and t == transition)


def settled(path: Path, *sinks: str) -> Callable[[], bool]:
    """Every sink has taken the whole outbox (its cursor is at the newest notification) and has nothing pending."""

    def check() -> bool:
        newest = query(path, "SELECT coalesce(max(id), 0) FROM notifications")[0][0]
        for sink in sinks:
            cursor = query(path, "SELECT last_id FROM sink_cursor WHERE sink = ?", sink)
            if not cursor or cursor[0][0] != newest:
                return False
        marks = ",".join("?" * len(sinks))
        return not query(path, f"SELECT 1 FROM delivery_state WHERE state = 'pending' AND sink IN ({marks})", *sinks)

    return check


def hook(http: HTTPServer, path: str, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": http.url_for(path), **FAST, **extra}


# -- defect 6: a new sink -------------------------------------------------------------------------


async def test_new_sink_gets_the_open_alerts_only_and_an_existing_sink_everything(tmp_path: Path) -> None:
    """A sink configured late gets the latest notification of each firing alert and nothing resolved; a sink that
    ran before gets every notification made since, resolutions included."""
    path = tmp_path / "m.db"
    await commit(path, ("gone", 401))
    with HTTPServer(host="127.0.0.1") as http:
        old, new = Recorder(ok), Recorder(ok)
        http.expect_request("/old").respond_with_handler(old)
        http.expect_request("/new").respond_with_handler(new)
        async with sidecar(settings_for(path, hook(http, "/old", name="old"))):
            await wait_until(settled(path, "old"), 20, "the old sink took the first firing")
        # While the sidecar is stopped: 'gone' resolves, 'open' fires, 'also' fires and repeats.
        repeats = AlertSettings(rules={"auth": AlertRule(resolve_hold_seconds=0),
                                       "billing": AlertRule(repeat_seconds=0.2)}, sweep_seconds=0.05)  # fmt: skip
        await commit(path, ("gone", 200), ("open", 401), ("also", 402), alerts=repeats, hold=0.6)
        assert any(t == ("also", "402", "repeat") for t in notes(path).values()), "no repeat made"
        async with sidecar(settings_for(path, hook(http, "/old", name="old"), hook(http, "/new", name="new"))):
            await wait_until(settled(path, "old", "new"), 20, "both sinks settled")
        http.clear()
    every = notes(path)
    latest_also = query(path, "SELECT key FROM notifications n JOIN alerts a ON a.id = n.alert_id"
                        " WHERE a.app = 'also' ORDER BY n.id DESC LIMIT 1")[0][0]  # fmt: skip
    assert sorted(new.received()) == sorted([key_of(path, "open", "firing"), latest_also]), [
        every[k] for k in new.received()
    ]
    # The existing sink gets every transition since its cursor; only the repeats a later one replaced are not sent.
    expected = {k for k, (_a, _c, t) in every.items() if t != "repeat"} | {latest_also}
    assert sorted(old.received()) == sorted(expected), "the existing sink must get every transition"
    # Tables: the new sink has rows only for what it was given; the old one a final state for every notification.
    assert states(path, "new") == {key_of(path, "open", "firing"): "delivered", latest_also: "delivered"}
    old_states = states(path, "old")
    assert set(old_states) == set(every)
    assert {k for k, v in old_states.items() if v == "delivered"} == expected
    assert {k for k, v in old_states.items() if v != "delivered"} == set(every) - expected
    assert set(old_states.values()) <= {"delivered", "superseded"}
    assert query(path, "SELECT app, state FROM alerts ORDER BY app") == [
        ("also", "firing"), ("gone", "resolved"), ("open", "firing")]  # fmt: skip
    assert query(path, "SELECT count(*) FROM deliveries WHERE sink = 'new'") == [(2,)]
    assert query(path, "SELECT count(*) FROM deliveries WHERE sink = 'old' AND status = 'delivered'") == [
        (len(expected),)
    ]
    newest = query(path, "SELECT max(id) FROM notifications")[0][0]
    assert query(path, "SELECT sink, last_id FROM sink_cursor ORDER BY sink") == [("new", newest), ("old", newest)]


async def test_sink_that_started_on_an_empty_outbox_is_not_new_later(tmp_path: Path) -> None:
    """A sink is 'new' only the first time the sidecar sees it: one that ran on an empty outbox gets an alert that
    fired and resolved while the sidecar was stopped (both transitions, in order)."""
    path = tmp_path / "m.db"
    await commit(path)
    with HTTPServer(host="127.0.0.1") as http:
        rec = Recorder(ok)
        http.expect_request("/alerts").respond_with_handler(rec)
        settings = settings_for(path, hook(http, "/alerts"))
        async with sidecar(settings):
            await wait_until(lambda: query(path, "SELECT last_id FROM sink_cursor WHERE sink = 'webhook'") == [(0,)],
                             20, "the sink registered on the empty outbox")  # fmt: skip
        await commit(path, ("shop", 401), ("shop", 200))
        async with sidecar(settings):
            await wait_until(settled(path, "webhook"), 20, "the sink settled")
        http.clear()
    got = [(m["alert"]["app"], m["transition"]) for msgs, _, _ in rec.requests for m in msgs]
    assert got == [("shop", "firing"), ("shop", "resolved")]
    assert set(states(path).values()) == {"delivered"} and len(states(path)) == 2
    assert query(path, "SELECT status, count(*) FROM deliveries GROUP BY status") == [("delivered", 2)]
    assert query(path, "SELECT app, state FROM alerts") == [("shop", "resolved")]


# -- defect 7: order per alert --------------------------------------------------------------------


class Gate:
    """A 207 webhook that fails the notifications ``blocked`` selects until opened, and records what it accepted."""

    def __init__(self, blocked: Callable[[dict[str, Any]], bool]) -> None:
        self.blocked = blocked
        self.open = False
        self.requests: list[list[dict[str, Any]]] = []
        self.accepted: list[dict[str, Any]] = []

    def __call__(self, request: Request) -> Response:
        messages = json.loads(request.data)["messages"]
        self.requests.append(messages)
        results = []
        for m in messages:
            if not self.open and self.blocked(m):
                results.append({"statusCode": 500, "message": "busy"})
            else:
                results.append({"xactionId": m["id"]})
                self.accepted.append(m)
        return Response(json.dumps({"responses": results}), status=207)

    def asked(self, key: str) -> int:
        return sum(1 for msgs in self.requests for m in msgs if m["id"] == key)

    def accepted_keys(self) -> list[str]:
        return [m["id"] for m in self.accepted]


async def test_webhook_a_parked_firing_is_never_sent_after_its_resolution(tmp_path: Path) -> None:
    """A firing that keeps failing holds back its alert's resolution: the receiver gets firing, then resolved."""
    path = tmp_path / "m.db"
    await commit(path, ("shop", 401))
    firing = key_of(path, "shop", "firing")
    gate = Gate(lambda m: m["id"] == firing)
    with HTTPServer(host="127.0.0.1") as http:
        http.expect_request("/alerts").respond_with_handler(gate)
        async with sidecar(settings_for(path, hook(http, "/alerts", attempts=1))):
            await wait_until(lambda: gate.asked(firing) >= 1, 20, "the firing tried and failed")
            await commit(path, ("shop", 200))
            resolved = key_of(path, "shop", "resolved")
            await wait_until(lambda: resolved in states(path), 20, "the resolution taken by the sink")
            asked = gate.asked(firing)
            # Two more rounds that tried the firing, the second one begun after the resolution was pending; or
            # the resolution accepted while the firing is still failing (the defect).
            await wait_until(lambda: gate.asked(firing) >= asked + 2 or resolved in gate.accepted_keys(), 20,
                             "a round after the resolution was pending")  # fmt: skip
            gate.open = True
            await wait_until(settled(path, "webhook"), 20, "both delivered")
        http.clear()
    assert gate.accepted_keys() == [firing, resolved], "the receiver saw the alert re-open after its resolution"
    assert states(path) == {firing: "delivered", resolved: "delivered"}
    first_try_resolved = query(path, "SELECT min(d.started_at) FROM deliveries d JOIN notifications n"
                               " ON n.id = d.notification_id WHERE n.key = ?", resolved)[0][0]  # fmt: skip
    firing_done = query(path, "SELECT d.finished_at FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
                        " WHERE n.key = ? AND d.status = 'delivered'", firing)[0][0]  # fmt: skip
    assert first_try_resolved >= firing_done, "the resolution was tried before the firing was confirmed"
    assert query(path, "SELECT status FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
                 " WHERE n.key = ?", resolved) == [("delivered",)]  # fmt: skip
    assert query(path, "SELECT state FROM alerts WHERE app = 'shop'") == [("resolved",)]
    assert [t for (_a, _c, t) in notes(path).values()] == ["firing", "resolved"]


async def test_webhook_a_pending_repeat_is_superseded_by_the_next_transition(tmp_path: Path) -> None:
    """An undelivered 'repeat' is marked superseded once a later transition of its alert is pending; the receiver
    gets firing then resolved, never the stale repeat after the resolution."""
    path = tmp_path / "m.db"
    await commit(path, ("shop", 401))
    with HTTPServer(host="127.0.0.1") as http:
        gate = Gate(lambda m: m["transition"] == "repeat")
        http.expect_request("/alerts").respond_with_handler(gate)
        async with sidecar(settings_for(path, hook(http, "/alerts", attempts=1))):
            await wait_until(settled(path, "webhook"), 20, "the firing delivered")
            repeats = AlertSettings(rules={"auth": AlertRule(repeat_seconds=0.2)}, sweep_seconds=0.05)
            await commit(path, alerts=repeats, hold=0.5)
            repeat = key_of(path, "shop", "repeat")
            await wait_until(lambda: gate.asked(repeat) >= 1, 20, "a repeat tried and failed")
            await commit(path, ("shop", 200))
            resolved = key_of(path, "shop", "resolved")
            await wait_until(lambda: resolved in gate.accepted_keys(), 20, "the resolution accepted")
            gate.open = True
            await wait_until(settled(path, "webhook"), 20, "nothing pending")
        http.clear()
    firing = key_of(path, "shop", "firing")
    kinds = [m["transition"] for m in gate.accepted]
    assert kinds[-1] == "resolved", f"a stale notification was accepted after the resolution: {kinds}"
    assert gate.accepted_keys()[0] == firing
    result = states(path)
    repeat_keys = [k for k, (_a, _c, t) in notes(path).items() if t == "repeat"]
    assert {result[k] for k in repeat_keys} == {"superseded"}
    assert (result[firing], result[resolved]) == ("delivered", "delivered")
    assert query(path, "SELECT state FROM alerts WHERE app = 'shop'") == [("resolved",)]
    marks = ",".join("?" * len(repeat_keys))
    tried = query(path, "SELECT DISTINCT d.status FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
                  f" WHERE n.key IN ({marks})", *repeat_keys)  # fmt: skip
    assert tried == [("retry",)], "a repeat was tried and failed, and never delivered"
    # Each superseded repeat names a later notification of its alert; the last one names the resolution.
    ids = {k: n for n, k in query(path, "SELECT id, key FROM notifications")}
    for key in repeat_keys:
        reason = query(path, "SELECT d.reason FROM delivery_state d JOIN notifications n ON n.id = d.notification_id"
                       " WHERE n.key = ?", key)[0][0]  # fmt: skip
        assert reason.startswith("superseded by notification ") and ids[reason.split()[-1]] > ids[key]
    assert reason == f"superseded by notification {resolved}"


def am_active(url: str, app: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts?active=true", timeout=5) as r:
        alerts = json.loads(r.read())
    return [a for a in alerts if a["labels"].get("app") == app]


async def test_alertmanager_gets_the_latest_state_and_never_reopens(
    tmp_path: Path, alertmanager: tuple[str, HTTPServer]
) -> None:
    """A firing parked by a failing proxy, then the sidecar restarted after the alert resolved: a real Alertmanager
    gets only the resolution (the parked firing is superseded), and the alert stays resolved there."""
    url, _hook = alertmanager
    path = tmp_path / "m.db"
    await commit(path, ("shop", 401))
    firing = key_of(path, "shop", "firing")
    forwarded: list[list[str]] = []
    state = {"open": False}

    def proxy(request: Request) -> Response:
        alerts = json.loads(request.data)
        ids = [a["annotations"].get("xmppmon_id", "") for a in alerts]
        if firing in ids and not state["open"]:
            return Response("upstream busy", status=503)
        forwarded.append(ids)
        req = urllib.request.Request(f"{url}/api/v2/alerts", data=request.data, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=5) as r:
            return Response(r.read(), status=r.status)

    with HTTPServer(host="127.0.0.1") as front:
        front.expect_request("/api/v2/alerts", method="POST").respond_with_handler(proxy)
        sink = {"type": "alertmanager", "url": front.url_for("/"), **FAST, "attempts": 1, "park_seconds": 5}
        settings = settings_for(path, sink)
        async with sidecar(settings):
            await wait_until(lambda: query(path, "SELECT 1 FROM deliveries WHERE status = 'retry'"), 20,
                             "the firing failed once and is parked")  # fmt: skip
        # The sidecar restarts (an upgrade, kill -9, systemctl restart) while the firing is parked.
        await commit(path, ("shop", 200))
        resolved = key_of(path, "shop", "resolved")
        async with sidecar(settings):
            await wait_until(lambda: states(path, "alertmanager").get(resolved) == "delivered", 20, "resolved posted")
            state["open"] = True
            await wait_until(settled(path, "alertmanager"), 20, "nothing pending")
        front.clear()
    assert am_active(url, "shop") == [], "Alertmanager has the alert active again after its resolution"
    assert [firing] not in forwarded and forwarded[-1] == [resolved]
    assert states(path, "alertmanager") == {firing: "superseded", resolved: "delivered"}
    story = query(path, "SELECT n.key, d.status FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
                  " ORDER BY d.id")  # fmt: skip
    assert story == [(firing, "retry"), (resolved, "delivered")]
    assert [t for (_a, _c, t) in notes(path).values()] == ["firing", "resolved"]
    assert query(path, "SELECT state FROM alerts WHERE app = 'shop'") == [("resolved",)]
