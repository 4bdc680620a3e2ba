"""The public interface of the agent for plugins: what a plugin may import, and what it may implement.

A plugin is a slixmpp ``BasePlugin`` (see ``plugins/monitor_events``). Its configuration carries
``store`` (a :class:`Store`: ``submit_events``, ``submit_quarantine``, ``count``, ``set_state``),
``monitor_jid``, ``namespace`` and ``max_payload_bytes``. It never writes SQL.

The session knows plugins only through :class:`Recovering`: a plugin that implements it reports
how many events each delivery path recovered (``resume``, ``offline``, ``mam``) and the newest
archive (XEP-0313) id whose events it handed to the store, and the session's catch-up uses them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol, runtime_checkable

from slixmpp import BaseXMPP

from agent.events import Event, InvalidEvent, parse_event, utc_now
from agent.store import Quarantined, Store

__all__ = ["Event", "InvalidEvent", "Quarantined", "Recovering", "Store", "parse_event", "recovering", "utc_now"]


@runtime_checkable
class Recovering(Protocol):
    """A plugin that stores archived and replayed stanzas and reports what it recovered."""

    #: Events handed to the store per delivery path since the session last cleared it.
    recovered: Counter[str]
    #: The newest archive id seen in this process whose events were handed to the store.
    last_archive_id: str | None


def recovering(xmpp: BaseXMPP) -> list[Recovering]:
    """The enabled plugins that implement :class:`Recovering`."""
    manager: Any = xmpp.plugin  # typed as a TypedDict of the XEPs; it is slixmpp's PluginManager
    return [plugin for name in manager if isinstance(plugin := manager[name], Recovering)]
