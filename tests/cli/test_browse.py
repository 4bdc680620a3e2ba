"""`xmppmon browse`: a real Datasette over a real agent's database, read-only, queried over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.exceptions import StoreError, XmppmonError
from agent.lab.net import free_loopback_port
from agent.lab.prosody import ProsodyServer
from agent.reasons import reason_class
from agent.store.canned import QUERIES

from ..observed import Deployment, deployment, poll_until, require, rows

pytestmark = [pytest.mark.prosody, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def observed(prosody: ProsodyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An agent and a sidecar after one wave, with dead letters from the sink that answers 400."""
    with deployment(prosody, tmp_path_factory.mktemp("browse")) as d:
        d.wave(1500, seed=31)
        poll_until(
            lambda: rows(d.db, "SELECT count(*) FROM delivery_state WHERE sink = 'broken' AND state = 'dead'")[0][0],
            60, "dead letters on the broken sink",
        )  # fmt: skip
        yield d


@pytest.fixture(scope="module")
def browse(observed: Deployment) -> Iterator[str]:
    """`xmppmon browse` on a free loopback port; the URL of its database."""
    port = free_loopback_port()
    log = observed.dir / "browse.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "browse", "--database", str(observed.db), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        poll_until(lambda: _status(f"http://127.0.0.1:{port}/-/versions.json") == 200 or proc.poll() is not None, 90)
        assert proc.poll() is None, log.read_text()
        yield f"http://127.0.0.1:{port}/{observed.db.stem}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise
    assert code == 0, log.read_text()[-2000:]


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return 0


def canned(url: str, name: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/{name}.json", params={"_shape": "array"}, timeout=30)
    assert answer.status_code == 200, answer.text[:500]
    return list(answer.json())


def test_every_table_and_column_is_described(observed: Deployment, browse: str) -> None:
    """The shipped metadata describes every table and column the agent's database has, and Datasette shows it."""
    meta = httpx.get(f"{browse.rsplit('/', 1)[0]}/-/metadata.json", timeout=10).json()
    described = meta["databases"][observed.db.stem]["tables"]
    missing = []
    for (table,) in rows(
        observed.db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ):
        columns = [r[1] for r in rows(observed.db, f"PRAGMA table_info({table})")]
        about = described.get(table, {})
        if not about.get("description"):
            missing.append(table)
        missing += [f"{table}.{c}" for c in columns if not about.get("columns", {}).get(c)]
    assert not missing, f"describe these in agent/store/catalog.py: {missing}"
    page = httpx.get(f"{browse}/api_calls", timeout=30).text
    assert "how long the call took, in milliseconds" in page


def test_facets_on_kind_app_and_status(browse: str) -> None:
    """Tables open faceted by kind, app and status where they have those columns."""
    facets = {
        table: set(httpx.get(f"{browse}/{table}.json", params={"_size": 1}, timeout=30).json()["facet_results"])
        for table in ("events", "api_calls", "deliveries", "quarantine")
    }
    assert facets == {"events": {"kind", "app"}, "api_calls": {"app", "status"}, "deliveries": {"status"},
                      "quarantine": {"app"}}  # fmt: skip


def test_each_canned_query_answers_from_the_real_database(observed: Deployment, browse: str) -> None:
    """Each of the six canned queries returns, as JSON, what the database holds (computed here another way)."""
    db = observed.db
    assert set(QUERIES) == {"events_per_minute", "firing_alerts", "failed_deliveries", "quarantine_by_reason",
                            "devices_seen_today", "slowest_api_calls"}  # fmt: skip

    per_kind: dict[str, int] = {}
    for row in canned(browse, "events_per_minute"):
        per_kind[row["kind"]] = per_kind.get(row["kind"], 0) + row["events"]
    assert per_kind == observed.held()  # the wave's events all carry this minute's time

    firing = canned(browse, "firing_alerts")
    assert {r["id"] for r in firing} == {r[0] for r in rows(db, "SELECT id FROM alerts WHERE state = 'firing'")}
    assert firing and firing[0]["severity"] == "critical"

    failed = canned(browse, "failed_deliveries")
    assert len(failed) == rows(db, "SELECT count(*) FROM deliveries WHERE status <> 'delivered'")[0][0] > 0
    assert {r["sink"] for r in failed} == {"broken"} and {r["status"] for r in failed} <= {"dead", "retry", "failed"}
    assert any(r["status"] == "dead" and r["state_now"] == "dead" and r["http_status"] == 400 for r in failed)

    by_reason = canned(browse, "quarantine_by_reason")
    assert sum(r["events"] for r in by_reason) == observed.sent["malformed_sent"]
    assert all(r["class"] == reason_class(r["reason"]) != "other" for r in by_reason)

    seen = {(r["app"], r["device_id"]) for r in canned(browse, "devices_seen_today")}
    expected = {("demo", json.loads(p)["device_id"]) for (p,) in rows(db, "SELECT payload FROM events")}
    for table in ("devices", "tags", "tokens", "push_feedback"):
        expected |= set(rows(db, f"SELECT app, device_id FROM {table}"))
    assert seen == expected and len(seen) > 100

    slowest = canned(browse, "slowest_api_calls")
    latencies = [r["latency_ms"] for r in slowest]
    assert latencies == sorted(latencies, reverse=True)
    calls = rows(db, "SELECT count(*), max(latency_ms) FROM api_calls")[0]
    assert len(slowest) == min(100, calls[0]) and latencies[0] == calls[1]


def test_read_only_and_live(observed: Deployment, browse: str) -> None:
    """Datasette refuses writes, holds no lock the agent waits on, and sees what the agent commits meanwhile."""
    before = observed.held()
    refused = httpx.get(browse + ".json", params={"sql": "DELETE FROM events"}, timeout=30).json()
    assert refused["ok"] is False
    observed.wave(200, seed=32)  # the agent keeps committing while Datasette has the file open
    after = observed.held()
    assert sum(after.values()) > sum(before.values())
    per_kind: dict[str, int] = {}
    for row in canned(browse, "events_per_minute"):
        per_kind[row["kind"]] = per_kind.get(row["kind"], 0) + row["events"]
    assert per_kind == after
    databases = httpx.get(f"{browse.rsplit('/', 1)[0]}/-/databases.json", timeout=10).json()
    assert [d["is_mutable"] for d in databases] == [True]  # mode=ro on a live file, not an immutable snapshot


def test_screenshot_in_headless_chromium(observed: Deployment, browse: str, tmp_path: Path) -> None:
    """Debian's chromium renders a Datasette page of the database to a PNG (the README's screenshot)."""
    chromium = require("chromium", "chromium")
    shot, profile = tmp_path / "browse.png", tmp_path / "profile"
    profile.mkdir()
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1280,1000", f"--screenshot={shot}",
         f"{browse}/events?_size=15"],
        capture_output=True, timeout=120, check=True, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1000) and len(data) > 20_000  # a page, not a blank image
    if target := os.environ.get("XMPPMON_SCREENSHOT_TO"):
        shutil.copyfile(shot, target)


def test_without_datasette_or_database_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing extra or database is one clear error, not a traceback."""
    import importlib.util

    from agent.cli.browse import run_browse

    with pytest.raises(StoreError, match="does not exist"):
        run_browse(tmp_path / "none.db", "127.0.0.1", free_loopback_port())
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(XmppmonError, match=r"pip install 'xmppmon\[browse\]'"):
        run_browse(tmp_path / "none.db", "127.0.0.1", free_loopback_port())


def test_a_port_in_use_is_one_line(observed: Deployment) -> None:
    """`xmppmon browse --port` on a taken port exits 1 with one line naming it."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "agent", "browse", "--database", str(observed.db), "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == f"xmppmon: cannot listen on 127.0.0.1:{port} for browse: Address already in use"
