"""Plugin loading: built-ins, entry points, and broken plugins skipped without stopping the agent."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
from slixmpp import ClientXMPP
from slixmpp.plugins.base import BasePlugin

from agent import pluginload
from agent.config import load_settings
from agent.exceptions import PluginError
from agent.store import Store


class Recorder(BasePlugin):  # type: ignore[misc]
    """A third-party plugin that only remembers it was initialised with the store."""

    name = "recorder"
    description = "test plugin"
    dependencies: ClassVar[set[str]] = set()
    default_config: ClassVar[dict[str, Any]] = {"store": None}

    def plugin_init(self) -> None:
        assert self.store is not None


class Broken(BasePlugin):  # type: ignore[misc]
    name = "broken"
    description = "fails in plugin_init"
    dependencies: ClassVar[set[str]] = set()
    default_config: ClassVar[dict[str, Any]] = {}

    def plugin_init(self) -> None:
        raise RuntimeError("boom")


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("xmppmon_test_plugins")
    module.Recorder = Recorder  # type: ignore[attr-defined]
    module.Broken = Broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "xmppmon_test_plugins", module)

    class EP:
        def __init__(self, name: str, value: str) -> None:
            self.name, self.value, self.dist = name, value, None

    def entry_points(group: str) -> list[EP]:
        assert group == "xmppmon.plugins"
        return [
            EP("recorder", "xmppmon_test_plugins:Recorder"),
            EP("broken", "xmppmon_test_plugins:Broken"),
            EP("missing", "no_such_module:Plugin"),
        ]

    monkeypatch.setattr(pluginload, "entry_points", entry_points)


async def test_builtin_and_entry_point_plugins_load_and_broken_ones_are_skipped(
    tmp_path: Path, fake_entry_points: None, captured_logs: list[str]
) -> None:
    """Enabled plugins load from entry points; one that fails to import or init is logged and skipped."""
    store = await Store.open(load_settings(None, store={"path": str(tmp_path / "m.db")}).store)
    settings = load_settings(None, plugins={"enabled": ["monitor_events", "recorder", "broken", "missing", "nope"]})
    client = ClientXMPP("a@localhost", "x")
    try:
        loaded = pluginload.load_plugins(client, settings, store)
    finally:
        await store.close()
    assert loaded == ["monitor_events", "recorder"]
    text = "\n".join(captured_logs)
    assert "plugin broken" in text and "boom" in text
    assert "plugin missing" in text and "plugin nope is not installed" in text


async def test_nothing_loadable_is_an_error(tmp_path: Path, fake_entry_points: None) -> None:
    """If no enabled plugin loads, start-up fails: the agent would store nothing."""
    store = await Store.open(load_settings(None, store={"path": str(tmp_path / "m.db")}).store)
    settings = load_settings(None, plugins={"enabled": ["broken"]})
    try:
        with pytest.raises(PluginError, match="nothing would be stored"):
            pluginload.load_plugins(ClientXMPP("a@localhost", "x"), settings, store)
    finally:
        await store.close()


def test_the_package_declares_its_builtin_entry_point() -> None:
    """The installed distribution exposes monitor_events in the xmppmon.plugins group."""
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="xmppmon.plugins")}
    assert "monitor_events" in names
