"""The Alertmanager sink against Debian's prometheus-alertmanager, and the XMPP sink against a real Prosody."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from slixmpp import ClientXMPP
from werkzeug import Request, Response

from agent.config import AlertRule, AlertSettings, Settings, StoreSettings
from agent.events import parse_event
from agent.lab.prosody import ProsodyServer
from agent.store import Store

from .test_webhook import query, run_until, states

ALERTMANAGER = "prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def api_events(path: Path, *statuses: int) -> None:
    """Commit api events for app 'shop' through the agent's store (auth resolves at once)."""
    store = await Store.open(
        StoreSettings(path=path, flush_ms=2), AlertSettings(rules={"auth": AlertRule(resolve_hold_seconds=0)})
    )
    store.submit_events([parse_event({"id": f"e{time.time_ns()}-{i}", "kind": "api", "app": "shop",
                                      "ts": "2026-11-22T10:00:00.000Z"}, f'{{"api":"reach","status":{s}}}', 65536)
                         for i, s in enumerate(statuses)], "r")  # fmt: skip
    await store.barrier()
    await store.close()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, HTTPServer]]:
    """A real Alertmanager on 127.0.0.1 whose webhook receiver is a local HTTP server."""
    binary = shutil.which(ALERTMANAGER)
    if binary is None:
        pytest.fail(f"{ALERTMANAGER} is not installed: apt-get install -y prometheus-alertmanager")
    with HTTPServer(host="127.0.0.1") as hook:
        config = tmp_path / "am.yml"
        config.write_text(
            "route:\n  receiver: hook\n  group_by: [alertname, app]\n  group_wait: 100ms\n"
            "  group_interval: 500ms\n  repeat_interval: 1h\n"
            f"receivers:\n  - name: hook\n    webhook_configs:\n      - url: {hook.url_for('/am')}\n"
            "        send_resolved: true\n"
        )
        port = free_port()
        log = (tmp_path / "am.log").open("wb")
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, (tmp_path / "am.log").read_text()
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    assert time.monotonic() < deadline, "Alertmanager did not become ready"
                    time.sleep(0.05)
            yield url, hook
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
            hook.clear()


async def test_alertmanager_receives_firing_then_resolved(tmp_path: Path, alertmanager: tuple[str, HTTPServer]) -> None:
    """A firing notification posted to a real Alertmanager reaches its webhook as firing, then as resolved."""
    url, hook = alertmanager
    received: list[dict[str, Any]] = []

    def handler(request: Request) -> Response:
        received.append(json.loads(request.data))
        return Response("", status=200)

    hook.expect_request("/am").respond_with_handler(handler)
    path = tmp_path / "m.db"
    await api_events(path, 401)
    settings = Settings(
        store=StoreSettings(path=path),
        sidecar={
            "sinks": [{"type": "alertmanager", "url": url, "backoff_initial": 0.05, "park_seconds": 0.3}],
            "poll_seconds": 0.05,
            "agent_down_after": 3600,
        },
    )

    def got(status: str) -> bool:
        return any(p["status"] == status and p["alerts"][0]["labels"].get("code") == "401" for p in received)

    await run_until(settings, lambda: got("firing"), timeout=20)
    alert = next(p for p in received if p["status"] == "firing")["alerts"][0]
    assert alert["labels"]["alertname"] == "xmppmon_api_401" and alert["labels"]["app"] == "shop"
    assert "SDK key" in alert["annotations"]["advice"]
    await api_events(path, 200)
    await run_until(settings, lambda: got("resolved"), timeout=20)
    assert set(states(path, "alertmanager").values()) == {"delivered"}
    assert query(path, "SELECT count(*) FROM deliveries WHERE sink = 'alertmanager' AND status = 'delivered'") == [(2,)]


def xmpp_sidecar_settings(path: Path, server: ProsodyServer, sink: dict[str, Any]) -> Settings:
    """Sidecar settings with one XMPP sink on its own account, sidecar@localhost, on ``server`` (the agent's
    account is another one: the sink may not share it)."""
    return Settings(
        store=StoreSettings(path=path),
        xmpp={"jid": "agent@localhost", "password": "agent-pass", "host": "127.0.0.1",
              "port": server.c2s_port, "ca_file": server.ca_file, "negotiation_timeout": 10},
        sidecar={"sinks": [{"jid": "sidecar@localhost", "password": "sidecar-pass", **sink}], "poll_seconds": 0.05,
                 "agent_down_after": 3600},
    )  # fmt: skip


async def test_xmpp_sink_delivers_to_operator_confirmed_by_server(tmp_path: Path, prosody: ProsodyServer) -> None:
    """A notification reaches the ops account on a real Prosody and is marked delivered on the server's ack."""
    prosody.register("ops", "ops-pass")
    prosody.register("sidecar", "sidecar-pass")
    ops = ClientXMPP("ops@localhost/desk", "ops-pass")
    ops.ca_certs = prosody.ca_file
    ops.enable_direct_tls, ops.enable_plaintext = False, False
    bodies: list[str] = []
    up = asyncio.Event()

    def started(_: Any) -> None:
        ops.send_presence()
        up.set()

    ops.add_event_handler("session_start", started)
    ops.add_event_handler("message", lambda msg: bodies.append(msg["body"]))
    ops.connect(host="127.0.0.1", port=prosody.c2s_port)
    await asyncio.wait_for(up.wait(), 15)
    try:
        path = tmp_path / "m.db"
        await api_events(path, 402)
        key = query(path, "SELECT key FROM notifications")[0][0]
        settings = xmpp_sidecar_settings(path, prosody, {"type": "xmpp", "jids": ["ops@localhost"], "timeout": 5})
        await run_until(settings, lambda: states(path, "xmpp") == {key: "delivered"} and bool(bodies), timeout=20)
    finally:
        await ops.disconnect(wait=2.0)
    assert "[FIRING] critical api 402 shop reach" in bodies[0] and key in bodies[0]
    how = query(path, "SELECT diag_info FROM deliveries WHERE sink = 'xmpp' AND status = 'delivered'")[0][0]
    assert "xep-0198 ack" in how or "xep-0184 receipt" in how
