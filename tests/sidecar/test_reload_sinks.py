"""SIGHUP on a real ``xmppmon sidecar`` process with a TOML file: webhook sinks (a real local HTTP server) are
added, removed and replaced in place, and none of them loses what it had pending."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Response

from agent.lab.net import free_loopback_port

from ..conftest import wait_until
from ..metrics.test_agent_metrics import scrape
from ..systemd import test_notify
from ..systemd.test_notify import NotifySocket, stop_agent
from ..systemd.test_reload import clean_env, hangup, start, text, write_config
from .test_order import commit, key_of, settled
from .test_webhook import FAST, Recorder, ok, query, states

notify, processes = test_notify.notify, test_notify.processes  # the fixtures, shared


def config(db: Path, port: int, *sinks: dict[str, Any]) -> dict[str, Any]:
    return {
        "store": {"path": db},
        "sidecar": {"poll_seconds": 0.05, "agent_down_after": 3600, "sinks": list(sinks),
                    "metrics_listen": f"127.0.0.1:{port}"},
        "log": {"level": "INFO"},
    }  # fmt: skip


def sinks_up(port: int) -> list[str]:
    """The sinks the sidecar's /metrics has an xmppmon_sink_up series for."""
    return sorted(dict(labels)["sink"] for name, labels in scrape(port) if name == "xmppmon_sink_up")


def attempts(db: Path, sink: str) -> int:
    return int(query(db, "SELECT count(*) FROM deliveries WHERE sink = ?", sink)[0][0])


async def test_sighup_adds_removes_and_replaces_webhook_sinks_without_losing_pending_deliveries(
    tmp_path: Path, notify: NotifySocket, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A sink added by a reload gets the open alerts only; a removed one stops after its round, its pending
    notification kept in delivery_state; added back, it delivers that and what came meanwhile; a replaced sink
    goes on from its own state without sending anything twice; RELOADING=1 and READY=1 each time."""
    db, log, path = tmp_path / "m.db", tmp_path / "sidecar.log", tmp_path / "sidecar.toml"
    port = free_loopback_port()
    down = {"a": False}
    with HTTPServer(host="127.0.0.1") as http:
        a = Recorder(lambda m: Response("down", status=500) if down["a"] else ok(m))
        b = Recorder(ok)
        http.expect_request("/a").respond_with_handler(a)
        http.expect_request("/b").respond_with_handler(b)
        sink_a = {"type": "webhook", "name": "a", "url": http.url_for("/a"), **FAST}
        sink_b = {"type": "webhook", "name": "b", "url": http.url_for("/b"), **FAST}
        write_config(path, config(db, port, sink_a))
        proc = start("sidecar", path, log, clean_env(notify))
        processes.append(proc)
        await wait_until(lambda: notify.with_key("READY"), 20, "READY=1")
        await wait_until(lambda: query(db, "SELECT 1 FROM sink_cursor WHERE sink = 'a'"), 20, "sink a known")
        await commit(db, ("gone", 401), ("gone", 200), ("open", 401))  # one alert resolved, one firing
        await wait_until(settled(db, "a"), 20, "sink a took the outbox")
        assert sorted(a.received()) == sorted(k for (k,) in query(db, "SELECT key FROM notifications"))
        assert sinks_up(port) == ["a"]

        # Added: b is a new sink, so it gets the latest notification of the open alert, nothing resolved.
        write_config(path, config(db, port, sink_a, sink_b))
        line, status = await hangup(proc, log, "sinks reloaded", notify)
        assert "added b, replaced none, removed none; relaying to a, b" in line
        assert status == "reloaded: applied sidecar.sinks"
        await wait_until(settled(db, "a", "b"), 20, "sinks a and b settled")
        assert b.received() == [key_of(db, "open", "firing")]
        assert sinks_up(port) == ["a", "b"]  # the metrics follow the sinks

        # Removed while a notification fails on it: it stays pending for a, and a is no longer tried.
        down["a"] = True
        await commit(db, ("more", 402))
        more = key_of(db, "more", "firing")
        await wait_until(lambda: states(db, "b").get(more) == "delivered", 20, "b delivered 'more'")
        await wait_until(lambda: more in a.received(), 20, "a tried 'more'")
        write_config(path, config(db, port, sink_b))
        line, _ = await hangup(proc, log, "sinks reloaded", notify)
        assert "removed a; relaying to b" in line
        tried = attempts(db, "a")
        assert states(db, "a")[more] == "pending"
        await commit(db, ("later", 402))
        later = key_of(db, "later", "firing")
        await wait_until(lambda: states(db, "b").get(later) == "delivered", 20, "b delivered 'later'")
        assert attempts(db, "a") == tried, "a removed sink was tried again"
        assert later not in states(db, "a") and states(db, "a")[more] == "pending"
        assert sinks_up(port) == ["b"]

        # Back, and b replaced (another batch size): a sends what it kept and what came meanwhile; b re-sends nothing.
        # The metrics listener is bound at start: another port needs a restart, the sinks change all the same.
        down["a"] = False
        moved = config(db, free_loopback_port(), sink_a | {"max_batch": 50}, sink_b | {"max_batch": 50})
        write_config(path, moved)
        line, status = await hangup(proc, log, "sinks reloaded", notify)
        assert "added a, replaced b, removed none" in line
        assert status == "reloaded: applied sidecar.sinks; needs restart: sidecar.metrics_listen"
        assert sinks_up(port) == ["a", "b"]
        await wait_until(settled(db, "a", "b"), 20, "a and b settled again")
        assert states(db, "a")[more] == "delivered" and states(db, "a")[later] == "delivered"
        await commit(db, ("last", 402))
        last = key_of(db, "last", "firing")
        await wait_until(settled(db, "a", "b"), 20, "the replaced b and a took 'last'")
        assert states(db, "b")[last] == "delivered" and states(db, "a")[last] == "delivered"
        assert sorted(b.received()) == sorted({key_of(db, "open", "firing"), more, later, last})
        http.clear()
        assert await asyncio.to_thread(stop_agent, proc) == 0, text(log)[-3000:]
    # Every table the sidecar writes: one delivered row per notification and sink, no dead letter, no own alert.
    assert set(states(db, "a").values()) == {"delivered"} and set(states(db, "b").values()) == {"delivered"}
    assert query(db, "SELECT count(*) FROM deliveries WHERE sink = 'b' AND status <> 'delivered'") == [(0,)]
    assert query(db, "SELECT count(*) FROM deliveries WHERE status = 'delivered' GROUP BY sink ORDER BY sink") == [
        (len(states(db, "a")),),
        (len(states(db, "b")),),
    ]
    assert query(db, "SELECT count(*) FROM alerts WHERE source = 'sidecar'") == [(0,)]
    assert query(db, "SELECT sink FROM sink_cursor ORDER BY sink") == [("a",), ("b",)]
    assert len(notify.with_key("RELOADING")) == 3
    assert "reload refused" not in text(log) and "ERROR" not in text(log)
