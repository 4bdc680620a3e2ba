"""Sidecar behaviours beyond plain delivery: the XMPP sink to a MUC room, Alertmanager re-posting, X-ClientStatistics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from slixmpp import JID, ClientXMPP
from werkzeug import Request, Response

from agent.config import Settings
from agent.lab.prosody import ProsodyServer
from agent.sidecar.runner import Sidecar
from agent.store.outbox import Outbox

from ..conftest import running, wait_until
from .test_sinks import api_events, xmpp_sidecar_settings
from .test_webhook import FAST, Recorder, make_notifications, query, settings_for, states, webhook

ROOM = "ops@conference.localhost"


@contextlib.asynccontextmanager
async def sidecar(settings: Settings) -> AsyncIterator[None]:
    """The sidecar running for the block (so the test can change the database meanwhile), then stopped."""
    outbox = await Outbox.open(settings.store.path, settings.alerts)
    relay = Sidecar(settings, outbox)
    stop = asyncio.Event()
    try:
        async with running(relay.run(stop)):
            try:
                yield
            finally:
                stop.set()
    finally:
        await relay.close()
        await outbox.close()


@pytest.mark.prosody
async def test_xmpp_sink_delivers_to_a_muc_room(tmp_path: Path) -> None:
    """A notification sent to a MUC room reaches an occupant as groupchat and is marked delivered for the sink."""
    with ProsodyServer(tmp_path / "prosody", muc="conference.localhost") as server:
        server.register("operator", "operator-pass")
        server.register("sidecar", "sidecar-pass")
        occupant = ClientXMPP("operator@localhost/desk", "operator-pass")
        occupant.ca_certs = server.ca_file
        occupant.enable_direct_tls, occupant.enable_plaintext = False, False
        occupant.register_plugin("xep_0045")
        bodies: list[tuple[str, str]] = []
        joined = asyncio.Event()

        async def started(_: Any) -> None:
            occupant.send_presence()
            await occupant.plugin["xep_0045"].join_muc_wait(JID(ROOM), "operator", maxstanzas=0, timeout=10)
            joined.set()

        occupant.add_event_handler("session_start", started)
        occupant.add_event_handler("groupchat_message", lambda msg: bodies.append((msg["type"], msg["body"])))
        occupant.connect(host="127.0.0.1", port=server.c2s_port)
        try:
            await asyncio.wait_for(joined.wait(), 15)
            path = tmp_path / "m.db"
            await api_events(path, 402)
            key = query(path, "SELECT key FROM notifications")[0][0]
            settings = xmpp_sidecar_settings(
                path, server, {"type": "xmpp", "room": ROOM, "nick": "xmppmon", "timeout": 5}
            )
            async with sidecar(settings):
                await wait_until(lambda: states(path, "xmpp") == {key: "delivered"}, 20, "delivered to the room")
                await wait_until(lambda: any(key in body for _, body in bodies), 10, "the occupant's groupchat message")
        finally:
            await occupant.disconnect(wait=2.0)
    kind, body = next((t, b) for t, b in bodies if key in b)
    assert kind == "groupchat" and "[FIRING] critical api 402 shop reach" in body
    rows = query(path, "SELECT status, diag_info FROM deliveries WHERE sink = 'xmpp'")
    assert [r[0] for r in rows] == ["delivered"] and "xep-0198 ack" in rows[0][1]


async def test_alertmanager_reposts_while_firing_and_stops_once_resolved(tmp_path: Path) -> None:
    """A firing alert is POSTed again every resend_seconds, and no longer once it was posted resolved with endsAt."""
    resend = 0.3
    posts: list[tuple[float, list[dict[str, Any]]]] = []

    def handler(request: Request) -> Response:
        posts.append((time.monotonic(), json.loads(request.data)))
        return Response("", status=200)

    def ours(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in alerts if a["labels"].get("code") == "401" and a["labels"].get("app") == "shop"]

    def firing() -> list[float]:
        return [t for t, alerts in posts for a in ours(alerts) if "endsAt" not in a]

    def resolved() -> list[float]:
        return [t for t, alerts in posts for a in ours(alerts) if "endsAt" in a]

    path = tmp_path / "m.db"
    await api_events(path, 401)
    with HTTPServer(host="127.0.0.1") as api:
        api.expect_request("/api/v2/alerts", method="POST").respond_with_handler(handler)
        sink = {"type": "alertmanager", "url": api.url_for("/"), "resend_seconds": resend, **FAST}
        async with sidecar(settings_for(path, sink)):
            await wait_until(lambda: len(firing()) >= 4, 10, "four POSTs of the firing alert")
            await api_events(path, 200)
            await wait_until(resolved, 10, "the resolved alert with endsAt")
            # Absence can only be seen by waiting: several resend periods with nothing firing posted.
            quiet_until = time.monotonic() + 4 * resend
            await wait_until(lambda: time.monotonic() > quiet_until, 10, "a quiet spell")
        api.clear()
    times = firing()
    assert times[-1] - times[0] >= 2 * resend * 0.9, "the re-posts are periodic, not one burst"
    assert max(times) < min(resolved()), "the firing alert was re-posted after it was resolved"
    assert len(resolved()) == 1, "the resolved alert is posted once, then no longer re-posted"


async def test_client_statistics_reports_the_previous_request(tmp_path: Path) -> None:
    """With client_statistics, the second request names the first one's request-id and latency; the first has none."""
    path = tmp_path / "m.db"
    await make_notifications(path, 2)
    answered = iter(["req-1", "req-2"])

    def answer(_: list[dict[str, Any]]) -> Response:
        time.sleep(0.12)  # a latency large enough to tell apart from a default
        return Response("{}", status=200, headers={"request-id": next(answered)})

    recorder = Recorder(answer)
    with HTTPServer(host="127.0.0.1") as http:
        http.expect_request("/alerts", method="POST").respond_with_handler(recorder)
        settings = settings_for(path, webhook(http, max_batch=1, client_statistics=True))
        async with sidecar(settings):
            await wait_until(lambda: set(states(path).values()) == {"delivered"}, 10, "both notifications delivered")
        http.clear()
    assert len(recorder.requests) == 2
    first, second = (headers for _, headers, _ in recorder.requests)
    assert not any(name.lower() == "x-clientstatistics" for name in first)
    latency = query(path, "SELECT latency_ms FROM deliveries WHERE request_id = 'req-1'")[0][0]
    assert latency >= 120
    assert second["X-Clientstatistics"] == f"MessageId=req-1,ResponseTime={round(latency)},SoapAction=notify"
