"""Find plugins (built-ins and the ``xmppmon.plugins`` entry-point group) and enable them.

A plugin is a slixmpp ``BasePlugin`` subclass. Entry points are read lazily, when the agent
starts; a plugin that fails to import or initialise is logged and skipped, never fatal, unless
nothing at all could be enabled.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from loguru import logger
from slixmpp.plugins.base import BasePlugin, register_plugin

from agent.exceptions import PluginError

if TYPE_CHECKING:
    from slixmpp import BaseXMPP

    from agent.config import Settings
    from agent.store import Store

log = logger.bind(component="plugins")

GROUP = "xmppmon.plugins"
#: Built-ins, so they load even from a source tree that was never pip-installed.
BUILTINS = {"monitor_events": "plugins.monitor_events:MonitorEvents"}


def discover() -> dict[str, tuple[str, str]]:
    """Plugin name -> (import path, version) for the built-ins and installed entry points."""
    found = {name: (target, "built-in") for name, target in BUILTINS.items()}
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        version = f"{dist.name} {dist.version}" if dist is not None else "unknown"
        if ep.value != found.get(ep.name, ("",))[0]:
            found[ep.name] = (ep.value, version)
    return found


def _import(target: str) -> type[BasePlugin]:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, BasePlugin)):
        raise TypeError(f"{target} is not a slixmpp BasePlugin subclass")
    return obj


def load_plugins(xmpp: BaseXMPP, settings: Settings, store: Store) -> list[str]:
    """Enable the plugins named in ``settings.plugins.enabled``; return those that loaded."""
    available = discover()
    loaded: list[str] = []
    common = {
        "store": store,
        "monitor_jid": settings.monitor.jid,
        "namespace": settings.monitor.namespace,
        "max_payload_bytes": settings.monitor.max_payload_bytes,
    }
    for name in settings.plugins.enabled:
        if name not in available:
            log.error("plugin {} is not installed (known: {}); skipped", name, ", ".join(available))
            continue
        target, version = available[name]
        try:
            cls = _import(target)
            register_plugin(cls, name=name)
            config = {k: v for k, v in common.items() if k in cls.default_config}
            xmpp.register_plugin(name, config)
        except Exception as exc:
            log.error("plugin {} ({}) failed to load: {}; skipped", name, target, exc)
            continue
        log.info("plugin {} loaded ({})", name, version)
        loaded.append(name)
    if settings.plugins.enabled and not loaded:
        raise PluginError("no plugin could be loaded: nothing would be stored")
    return loaded
