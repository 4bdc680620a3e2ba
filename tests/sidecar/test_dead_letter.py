"""``dead_letter`` (issue 10, defect 9): a sink that rejects a notification for good raises a warning that the
other sinks deliver, and it resolves after a quiet period without new dead letters on that sink."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Response

from agent.config import AlertRule, AlertSettings, Settings, StoreSettings

from ..conftest import wait_until
from .test_extra import sidecar
from .test_order import commit, hook, notes
from .test_webhook import Recorder, ok, query, states


def refuse(_: list[dict[str, Any]]) -> Response:
    return Response("schema mismatch: field 'alert' refused", status=400)


def transitions(rec: Recorder, code: str) -> list[dict[str, Any]]:
    return [m for msgs, _, _ in rec.requests for m in msgs if m["alert"]["code"] == code]


async def test_dead_letter_raised_reaches_another_sink_and_resolves_when_quiet(tmp_path: Path) -> None:
    """A notification dead-lettered by 'strict' raises dead_letter (warning, api=strict) delivered by 'backup'; its
    own copies dead-lettered by 'strict' do not feed it again; after quiet_seconds it resolves through 'backup'."""
    path = tmp_path / "m.db"
    await commit(path, ("shop", 401))
    firing = next(iter(notes(path)))
    with HTTPServer(host="127.0.0.1") as http:
        strict, backup = Recorder(refuse), Recorder(ok)
        http.expect_request("/strict").respond_with_handler(strict)
        http.expect_request("/backup").respond_with_handler(backup)
        settings = Settings(
            store=StoreSettings(path=path),
            alerts=AlertSettings(rules={"delivery": AlertRule(quiet_seconds=1.5)}, sweep_seconds=0.1),
            sidecar={"sinks": [hook(http, "/strict", name="strict"), hook(http, "/backup", name="backup")],
                     "poll_seconds": 0.05, "agent_down_after": 3600},
        )  # fmt: skip
        async with sidecar(settings):
            await wait_until(lambda: transitions(backup, "dead_letter"), 20, "dead_letter delivered by backup")
            await wait_until(lambda: [m["transition"] for m in transitions(backup, "dead_letter")][-1] == "resolved",
                             20, "dead_letter resolved after the quiet period")  # fmt: skip
            await wait_until(
                lambda: set(states(path, "strict").values()) == {"dead"} and len(states(path, "strict")) == 3,
                20,
                "strict dead-lettered the alert and both dead_letter notifications",
            )
        http.clear()
    fired, resolved = transitions(backup, "dead_letter")
    alert = fired["alert"]
    assert (fired["transition"], alert["source"], alert["api"], alert["severity"], alert["class"]) == (
        "firing", "sidecar", "strict", "warning", "delivery")  # fmt: skip
    assert firing in alert["detail"] and "HTTP 400" in alert["detail"] and "schema mismatch" in alert["detail"]
    assert resolved["alert"]["reason"] == "quiet"
    # Tables: one episode, one occurrence (strict's rejections of the dead_letter notifications do not count).
    assert query(path, "SELECT source, api, state, count FROM alerts WHERE code = 'dead_letter'") == [
        ("sidecar", "strict", "resolved", 1)]  # fmt: skip
    assert [t for (_a, c, t) in notes(path).values() if c == "dead_letter"] == ["firing", "resolved"]
    assert set(states(path, "backup").values()) == {"delivered"} and len(states(path, "backup")) == 3
    assert query(path, "SELECT count(*) FROM deliveries WHERE sink = 'strict' AND status = 'dead'") == [(3,)]
    reasons = query(path, "SELECT reason FROM delivery_state WHERE sink = 'strict'")
    assert all("HTTP 400" in r[0] for r in reasons)
