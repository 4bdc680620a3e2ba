"""The sidecar's webhook sink against a real local HTTP server (pytest-httpserver), one behaviour per test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from agent.config import AlertSettings, Settings, StoreSettings
from agent.events import parse_event
from agent.sidecar.instrumentation import parse_diagnostics
from agent.sidecar.runner import Sidecar
from agent.store import Store
from agent.store.outbox import Outbox

FAST = {
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
    "backoff_jitter": 0.05,
    "park_seconds": 0.3,
    "failing_retry_seconds": 0.5,
}


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    """A real HTTP server on 127.0.0.1, stopped after the test."""
    with HTTPServer(host="127.0.0.1") as http:
        yield http
        http.clear()


async def make_notifications(path: Path, n: int) -> list[str]:
    """n firing notifications (one 401 per app); returns their idempotency keys."""
    store = await Store.open(StoreSettings(path=path, flush_ms=2), AlertSettings())
    events = [
        parse_event(
            {"id": f"e{i}", "kind": "api", "app": f"app{i}", "ts": "2026-11-22T10:00:00.000Z"},
            '{"api":"reach","status":401}',
            65536,
        )
        for i in range(n)
    ]
    store.submit_events(events, "r")
    await store.barrier()
    await store.close()
    return [r[0] for r in query(path, "SELECT key FROM notifications ORDER BY id")]


def query(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def settings_for(path: Path, *sinks: dict[str, Any]) -> Settings:
    return Settings(
        store=StoreSettings(path=path), sidecar={"sinks": list(sinks), "poll_seconds": 0.05, "agent_down_after": 3600}
    )


async def run_until(settings: Settings, done: Callable[[], bool], timeout: float = 15.0) -> None:
    """Run the sidecar until ``done()`` holds (polled), then stop it; fail at the deadline."""
    outbox = await Outbox.open(settings.store.path, settings.alerts)
    sidecar = Sidecar(settings, outbox)
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "condition not reached before the deadline"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
        await sidecar.close()
        await outbox.close()


def states(path: Path, sink: str = "webhook") -> dict[str, str]:
    return dict(
        query(
            path,
            "SELECT n.key, d.state FROM delivery_state d JOIN notifications n"
            " ON n.id = d.notification_id WHERE d.sink = ?",
            sink,
        )
    )


class Recorder:
    """A scripted handler: answers in turn, records every request's messages and headers."""

    def __init__(self, *answers: Callable[[list[dict[str, Any]]], Response]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[list[dict[str, Any]], dict[str, str], float]] = []

    def __call__(self, request: Request) -> Response:
        messages = json.loads(request.data)["messages"]
        self.requests.append((messages, dict(request.headers), time.monotonic()))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(messages)

    def received(self) -> list[str]:
        return [m["id"] for messages, _, _ in self.requests for m in messages]


def ok(_: list[dict[str, Any]]) -> Response:
    return Response("{}", status=200, headers={"request-id": "srv-1", "X-FEServer": "fe1"})


def status(code: int, **headers: str) -> Callable[[list[dict[str, Any]]], Response]:
    return lambda _: Response("nope", status=code, headers=headers)


def webhook(server: HTTPServer, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": server.url_for("/alerts"), **FAST, **extra}


def delivered(path: Path, sink: str = "webhook") -> Callable[[], bool]:
    return lambda: bool(states(path, sink)) and set(states(path, sink).values()) <= {"delivered", "dead"}


async def test_2xx_delivers_the_batch_once_with_instrumentation(tmp_path: Path, server: HTTPServer) -> None:
    """A 200 confirms a whole batch in one POST, with seed 001's headers sent and recorded."""
    path = tmp_path / "m.db"
    keys = await make_notifications(path, 5)
    recorder = Recorder(
        lambda m: Response(
            "{}",
            status=200,
            headers={"request-id": "srv-1", "X-FEServer": "fe1", "X-TargetBEServer": "be1", "X-DiagInfo": "d"},
        )
    )
    server.expect_request("/alerts", method="POST").respond_with_handler(recorder)
    await run_until(settings_for(path, webhook(server, token="s3cret")), delivered(path))
    assert len(recorder.requests) == 1 and sorted(recorder.received()) == sorted(keys)
    messages, headers, _ = recorder.requests[0]
    assert messages[0]["transition"] == "firing" and messages[0]["alert"]["code"] == "401"
    assert headers["User-Agent"].startswith("xmppmon/") and headers["Authorization"] == "Bearer s3cret"
    assert headers["Return-Client-Request-Id"] == "true"
    row = query(
        path,
        "SELECT status, http_status, request_id, client_request_id, fe_server, be_server,"
        " diag_info, attempt FROM deliveries LIMIT 1",
    )[0]
    assert row[:3] == ("delivered", 200, "srv-1") and row[3] == headers["Client-Request-Id"]
    assert row[4:] == ("fe1", "be1", "d", 1)


async def test_207_retries_only_failed_items_and_dead_letters_item_400(tmp_path: Path, server: HTTPServer) -> None:
    """On 207, accepted items are done, a per-item 500 is retried alone and a per-item 400 is dead-lettered."""
    path = tmp_path / "m.db"
    keys = await make_notifications(path, 3)
    partial = Response(
        json.dumps(
            {
                "responses": [
                    {"xactionId": "x:0"},
                    {"statusCode": 500, "message": "busy"},
                    {"statusCode": 400, "message": "bad field"},
                ]
            }
        ),
        status=207,
    )
    recorder = Recorder(lambda _: partial, ok)
    server.expect_request("/alerts").respond_with_handler(recorder)
    await run_until(settings_for(path, webhook(server)), delivered(path))
    assert [len(m) for m, _, _ in recorder.requests][:2] == [3, 1]
    assert recorder.requests[1][0][0]["id"] == keys[1]
    # Anything later is the dead_letter alert the dead item raised (test_dead_letter.py).
    assert all(m["alert"]["code"] == "dead_letter" for msgs, _, _ in recorder.requests[2:] for m in msgs)
    assert {k: v for k, v in states(path).items() if k in keys} == {
        keys[0]: "delivered", keys[1]: "delivered", keys[2]: "dead"}  # fmt: skip
    reason = query(path, "SELECT reason FROM delivery_state WHERE state = 'dead'")[0][0]
    assert "bad field" in reason


async def test_413_splits_the_batch(tmp_path: Path, server: HTTPServer) -> None:
    """A 413 splits the batch until the pieces are accepted; each notification arrives once."""
    path = tmp_path / "m.db"
    keys = await make_notifications(path, 8)
    recorder = Recorder(lambda m: Response("too big", status=413) if len(m) > 2 else ok(m))
    server.expect_request("/alerts").respond_with_handler(recorder)
    await run_until(settings_for(path, webhook(server)), delivered(path))
    accepted = [m["id"] for messages, _, _ in recorder.requests if len(messages) <= 2 for m in messages]
    assert sorted(accepted) == sorted(keys)
    assert set(states(path).values()) == {"delivered"}


async def test_body_limit_splits_before_sending(tmp_path: Path, server: HTTPServer) -> None:
    """Batches are cut so that no request body exceeds max_bytes."""
    path = tmp_path / "m.db"
    await make_notifications(path, 6)
    sizes: list[int] = []

    def handler(request: Request) -> Response:
        sizes.append(len(request.data))
        return Response("{}", status=200)

    server.expect_request("/alerts").respond_with_handler(handler)
    await run_until(settings_for(path, webhook(server, max_bytes=2000)), delivered(path))
    assert len(sizes) > 1 and max(sizes) <= 2000


async def test_429_honours_retry_after(tmp_path: Path, server: HTTPServer) -> None:
    """A 429 with Retry-After: 1 is retried no sooner than one second later, then delivered."""
    path = tmp_path / "m.db"
    await make_notifications(path, 2)
    recorder = Recorder(status(429, **{"Retry-After": "1"}), ok)
    server.expect_request("/alerts").respond_with_handler(recorder)
    await run_until(settings_for(path, webhook(server)), delivered(path))
    assert len(recorder.requests) == 2
    assert recorder.requests[1][2] - recorder.requests[0][2] >= 0.95
    assert [r[0] for r in query(path, "SELECT status FROM deliveries ORDER BY id")] == ["retry"] * 2 + ["delivered"] * 2


async def test_500_then_recovery_parks_after_attempts_and_delivers_once(tmp_path: Path, server: HTTPServer) -> None:
    """Four 500s exhaust a round of 3 attempts, the notification stays pending, and is delivered once later."""
    path = tmp_path / "m.db"
    keys = await make_notifications(path, 1)
    recorder = Recorder(*[status(500)] * 4, ok)
    server.expect_request("/alerts").respond_with_handler(recorder)
    await run_until(settings_for(path, webhook(server)), delivered(path))
    assert len(recorder.requests) == 5
    story = query(path, "SELECT attempt, status, http_status FROM deliveries ORDER BY id")
    assert story == [(1, "retry", 500), (2, "retry", 500), (3, "retry", 500), (4, "retry", 500), (5, "delivered", 200)]
    assert states(path) == {keys[0]: "delivered"}


async def test_connection_refused_then_recovery(tmp_path: Path) -> None:
    """While nothing listens, attempts are recorded as retries; once a server starts, each notification arrives once."""
    path = tmp_path / "m.db"
    keys = await make_notifications(path, 3)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = settings_for(path, {"type": "webhook", "url": f"http://127.0.0.1:{port}/alerts", **FAST})
    refused = lambda: len(query(path, "SELECT 1 FROM deliveries WHERE status = 'retry'")) >= 9  # noqa: E731
    await run_until(settings, refused)
    assert "ConnectError" in query(path, "SELECT error FROM deliveries LIMIT 1")[0][0]
    with HTTPServer(host="127.0.0.1", port=port) as http:
        recorder = Recorder(ok)
        http.expect_request("/alerts").respond_with_handler(recorder)
        await run_until(settings, delivered(path))
        http.clear()
    assert sorted(recorder.received()) == sorted(keys)


async def test_401_marks_sink_failing_and_meta_alert_goes_through_other_sink(tmp_path: Path) -> None:
    """A 401 raises sink_failing, delivered by the other sink; when the first recovers it resolves."""
    path = tmp_path / "m.db"
    keys = await make_notifications(path, 1)
    with HTTPServer(host="127.0.0.1") as bad, HTTPServer(host="127.0.0.1") as good:
        refuse = Recorder(
            lambda _: Response(
                "no",
                status=401,
                headers={"x-ms-diagnostics": '2000001;reason="The token is invalid.";error_type="invalid_token"'},
            )
        )
        bad.expect_request("/alerts").respond_with_handler(refuse)
        other = Recorder(ok)
        good.expect_request("/alerts").respond_with_handler(other)
        settings = settings_for(path, webhook(bad, name="ops"), webhook(good, name="backup"))

        def meta_seen() -> bool:
            return any(m["alert"]["code"] == "sink_failing" for msgs, _, _ in other.requests for m in msgs)

        await run_until(settings, meta_seen)
        row = query(
            path,
            "SELECT status, diag_error_id, diag_reason, diag_error_type FROM deliveries WHERE sink = 'ops' LIMIT 1",
        )[0]
        assert row == ("unauthorized", 2000001, "The token is invalid.", "invalid_token")
        assert states(path, "ops")[keys[0]] == "pending"
        refuse.answers = [ok]
        await run_until(
            settings,
            lambda: (
                query(path, "SELECT state FROM alerts WHERE code = 'sink_failing'") == [("resolved",)]
                and delivered(path, "ops")()
                and delivered(path, "backup")()
            ),
        )
        bad.clear()
        good.clear()
    transitions = [(m["alert"]["code"], m["transition"]) for msgs, _, _ in other.requests for m in msgs]
    assert ("sink_failing", "firing") in transitions and ("sink_failing", "resolved") in transitions


async def test_400_on_single_item_is_dead_lettered(tmp_path: Path, server: HTTPServer) -> None:
    """A 400 for a batch is bisected down to the bad item, which is dead-lettered with the reason; the rest arrive."""
    path = tmp_path / "m.db"
    keys = await make_notifications(path, 4)
    recorder = Recorder(
        lambda m: Response("app2 is refused", status=400) if any(x["alert"]["app"] == "app2" for x in m) else ok(m)
    )
    server.expect_request("/alerts").respond_with_handler(recorder)
    await run_until(settings_for(path, webhook(server)), delivered(path))
    # Only the four: the dead_letter alert the bad item raises may still be on its way (test_dead_letter.py).
    result = {k: v for k, v in states(path).items() if k in keys}
    assert result.pop(keys[2]) == "dead" and set(result.values()) == {"delivered"} and len(result) == 3
    assert "app2 is refused" in query(path, "SELECT reason FROM delivery_state WHERE state = 'dead'")[0][0]


def test_parse_diagnostics() -> None:
    """x-ms-diagnostics is parsed into id, reason and type, the type defaulting from the id."""
    d = parse_diagnostics('2000002;reason="Token expired";error_category="token_expired"')
    assert d is not None and (d.error_id, d.reason, d.error_type) == (2000002, "Token expired", "token_expired")
    d = parse_diagnostics('2000008;reason="x"')
    assert d is not None and d.error_type == "invalid_grant"


async def test_dead_mans_switch_raises_and_resolves_agent_down(tmp_path: Path, server: HTTPServer) -> None:
    """A stale heartbeat raises agent_down through the sinks; a fresh one resolves it."""
    path = tmp_path / "m.db"
    await make_notifications(path, 0)
    conn = sqlite3.connect(path)
    conn.execute("INSERT OR REPLACE INTO agent_state VALUES ('heartbeat', '2020-01-01T00:00:00.000Z', 'x')")
    conn.commit()
    recorder = Recorder(ok)
    server.expect_request("/alerts").respond_with_handler(recorder)
    settings = settings_for(path, webhook(server))
    settings.sidecar.agent_down_after = 1.0

    def seen(t):
        return lambda: (
            ("agent_down", t)
            in [(m["alert"]["code"], m["transition"]) for msgs, _, _ in recorder.requests for m in msgs]
        )

    await run_until(settings, seen("firing"))
    store = await Store.open(StoreSettings(path=path, heartbeat_seconds=0.2))
    try:
        await run_until(settings, seen("resolved"))
    finally:
        await store.close()
        conn.close()


async def test_kill_9_loses_nothing_and_does_not_resend_confirmed(tmp_path: Path, server: HTTPServer) -> None:
    """A sidecar killed with SIGKILL mid-stream and restarted delivers every notification and never re-sends a confirmed one."""
    path = tmp_path / "m.db"
    keys = await make_notifications(path, 60)
    recorder = Recorder(ok)

    def slow(request: Request) -> Response:
        time.sleep(0.05)
        return recorder(request)

    server.expect_request("/alerts").respond_with_handler(slow)
    sinks = json.dumps([webhook(server, max_batch=3)])
    env = {
        **os.environ,
        "XMPPMON_STORE__PATH": str(path),
        "XMPPMON_SIDECAR__SINKS": sinks,
        "XMPPMON_SIDECAR__POLL_SECONDS": "0.05",
    }
    cmd = [sys.executable, "-m", "agent", "sidecar"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while len(recorder.received()) < 15:
            assert time.monotonic() < deadline and proc.poll() is None
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    confirmed = {k for k, s in states(path).items() if s == "delivered"}
    before = len(recorder.requests)
    assert 0 < len(confirmed) < 60
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while set(states(path).values()) != {"delivered"}:
            assert time.monotonic() < deadline and proc.poll() is None
            await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
    after = [m["id"] for msgs, _, _ in recorder.requests[before:] for m in msgs]
    assert not confirmed & set(after), "a confirmed notification was sent again"
    assert set(recorder.received()) == set(keys)
