"""agent.reload in one process: which settings changed, what is applied, kept or refused, and SIGHUPs folded."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from agent.config import Settings, load_settings
from agent.reload import AGENT_IGNORED, AGENT_IN_PLACE, Reloader, changed, keep, matches


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BASE = """
[xmpp]
jid = "agent@example.org"
password = "first-secret"
[alerts.rules.timeout]
threshold = 3
[sidecar]
poll_seconds = 1.0
"""


def test_changed_names_each_leaf_once_and_never_a_value(tmp_path: Path) -> None:
    """Dotted names of the leaves that differ; a list or a table is one name; a secret shows as its name only."""
    old = load_settings(write(tmp_path / "a.toml", BASE))
    new = load_settings(
        write(
            tmp_path / "b.toml",
            BASE.replace("first-secret", "second-secret").replace("threshold = 3", "threshold = 1")
            + '[log]\nlevel = "DEBUG"\n[[monitor.apps]]\napp = "x"\nkey = "k"\n',
        )
    )
    names = changed(old, new)
    assert names == ["xmpp.password", "monitor.apps", "log.level", "alerts.rules"]
    assert changed(old, old.model_copy(deep=True)) == []
    assert matches("alerts.rules", ("alerts",)) and matches("log", ("log",)) and not matches("logs.x", ("log",))


def test_keep_puts_the_named_settings_back() -> None:
    """keep() returns the new settings with the names given at their old values, the rest new, the old untouched."""
    old = Settings(xmpp={"jid": "a@example.org"}, log={"level": "INFO"})
    new = Settings(xmpp={"jid": "b@example.org", "port": 5223}, log={"level": "DEBUG"})
    running = keep(old, new, ["xmpp.jid"])
    assert (running.xmpp.jid, running.xmpp.port, running.log.level) == ("a@example.org", 5223, "DEBUG")
    assert new.xmpp.jid == "b@example.org" and old.log.level == "INFO"


async def test_reload_applies_in_place_keeps_what_needs_a_restart_and_refuses_a_bad_file(tmp_path: Path) -> None:
    """Appliers see the new rules; the new JID is reported and not applied; a bad file changes nothing at all."""
    path = write(tmp_path / "agent.toml", BASE)
    settings = load_settings(path)
    reloader = Reloader(settings, lambda: load_settings(path), in_place=AGENT_IN_PLACE, ignored=AGENT_IGNORED)
    calls: list[tuple[str, frozenset[str]]] = []

    async def apply(old: Settings, new: Settings, applied: frozenset[str]) -> None:
        calls.append((new.xmpp.jid, applied))

    reloader.appliers.append(apply)
    write(path, BASE.replace("threshold = 3", "threshold = 1").replace("agent@", "other@")
          .replace("poll_seconds = 1.0", "poll_seconds = 2.0"))  # fmt: skip
    assert await reloader.reload()
    assert calls == [("agent@example.org", frozenset({"alerts.rules"}))]
    running = reloader.settings
    assert running.xmpp.jid == "agent@example.org" and running.alerts.rules["timeout"].threshold == 1
    assert running.sidecar.poll_seconds == 2.0  # not the agent's: taken, neither applied nor reported

    write(path, BASE.replace("threshold = 3", "threshold = 0"))
    assert not await reloader.reload()
    write(path, "[alerts\n")
    assert not await reloader.reload()
    (tmp_path / "agent.toml").unlink()
    assert not await reloader.reload()
    assert len(calls) == 1 and reloader.settings is running


async def test_a_failing_applier_is_logged_and_the_reload_goes_on(tmp_path: Path, captured_logs: list[str]) -> None:
    """An applier that raises is one error line; the next applier still runs and the reload counts as done."""
    path = write(tmp_path / "agent.toml", BASE)
    reloader = Reloader(load_settings(path), lambda: load_settings(path), in_place=("alerts",), ignored=())
    ran: list[str] = []

    async def broken(old: Settings, new: Settings, applied: frozenset[str]) -> None:
        raise RuntimeError("boom")

    async def fine(old: Settings, new: Settings, applied: frozenset[str]) -> None:
        ran.append("fine")

    reloader.appliers += [broken, fine]
    write(path, BASE.replace("threshold = 3", "threshold = 2"))
    assert await reloader.reload()
    assert ran == ["fine"]
    assert [line for line in captured_logs if "applying the new settings failed: RuntimeError: boom" in line]


async def test_sighups_during_a_reload_make_one_more_reload(tmp_path: Path) -> None:
    """Three SIGHUPs while a reload is busy give one more reload, not three; SIGHUP does not end the process."""
    path = write(tmp_path / "agent.toml", BASE)
    loads: list[int] = []
    busy, release = asyncio.Event(), asyncio.Event()

    def load() -> Settings:
        loads.append(1)
        return load_settings(path)

    reloader = Reloader(load_settings(path), load, in_place=("alerts",), ignored=())

    async def slow(old: Settings, new: Settings, applied: frozenset[str]) -> None:
        busy.set()
        await release.wait()

    reloader.appliers.append(slow)
    reloader.listen()
    stop = asyncio.Event()
    serving = asyncio.ensure_future(reloader.serve(stop))
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(busy.wait(), 10)
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGHUP)
        while not reloader.wanted.is_set():  # the loop runs the handlers on its next turns
            await asyncio.sleep(0.01)
        busy.clear()
        release.set()
        await asyncio.wait_for(busy.wait(), 10)
        while reloader.wanted.is_set():
            await asyncio.sleep(0.01)
        assert len(loads) == 2
    finally:
        stop.set()
        await asyncio.wait_for(serving, 10)
        reloader.close()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


@pytest.mark.parametrize("section", ["xmpp", "monitor", "keepalive", "reconnect", "store", "plugins"])
def test_the_agent_needs_a_restart_for_its_session_and_store(section: str) -> None:
    """What makes the session or the store is neither applied in place nor ignored by the agent."""
    assert not matches(f"{section}.anything", AGENT_IN_PLACE) and not matches(f"{section}.anything", AGENT_IGNORED)


async def test_a_setting_bound_at_start_needs_a_restart_inside_a_section_applied_in_place(tmp_path: Path) -> None:
    """``restart`` wins over ``in_place``: sidecar.metrics_listen stays, sidecar.poll_seconds is applied."""
    path = write(tmp_path / "agent.toml", BASE)
    reloader = Reloader(load_settings(path), lambda: load_settings(path), in_place=("sidecar",), ignored=("alerts",),
                        restart=("sidecar.metrics_listen",))  # fmt: skip
    seen: list[frozenset[str]] = []

    async def apply(old: Settings, new: Settings, applied: frozenset[str]) -> None:
        seen.append(applied)

    reloader.appliers.append(apply)
    write(path, BASE.replace("poll_seconds = 1.0", 'poll_seconds = 2.0\nmetrics_listen = "127.0.0.1:9999"'))
    assert await reloader.reload()
    assert seen == [frozenset({"sidecar.poll_seconds"})]
    assert reloader.settings.sidecar.poll_seconds == 2.0 and reloader.settings.sidecar.metrics_listen == ""
