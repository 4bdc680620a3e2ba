"""The public interface of the agent for plugins: what a plugin may import, and what it may implement.

A plugin is a slixmpp ``BasePlugin`` (see ``plugins/monitor_events``). Its configuration carries
``store`` (a :class:`Store`: ``submit_events``, ``submit_quarantine``, ``count``, ``set_state``),
``monitor_jid``, ``namespace`` and ``max_payload_bytes``. It never writes SQL.

The session knows plugins only through :class:`Recovering`: a plugin that implements it reports
how many events each delivery path recovered (``resume``, ``offline``, ``mam``), and stores the
archive (XEP-0313) position of what it handed to the store as the session allows it
(``track_live``; see ``agent.session.catchup``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol, runtime_checkable

from slixmpp import BaseXMPP

from agent.events import Event, InvalidEvent, normalise_ts, parse_event, utc_now
from agent.store import Quarantined, Store

__all__ = [
    "Event",
    "InvalidEvent",
    "Quarantined",
    "Recovering",
    "Store",
    "normalise_ts",
    "parse_event",
    "recovering",
    "utc_now",
]


@runtime_checkable
class Recovering(Protocol):
    """A plugin that stores archived and replayed stanzas and reports what it recovered."""

    #: Events handed to the store per delivery path since the session last cleared it.
    recovered: Counter[str]
    #: Set by the session: True while the live stream continues the archive without a gap, so a live
    #: message's archive id may advance the stored position; archived replays always advance it.
    track_live: bool
    #: Set by the session: True on a resumed stream (delayed stanzas are the server's replay), False
    #: on a new session (delayed stanzas come from offline storage).
    resumed_stream: bool


def recovering(xmpp: BaseXMPP) -> list[Recovering]:
    """The enabled plugins that implement :class:`Recovering`."""
    manager: Any = xmpp.plugin  # typed as a TypedDict of the XEPs; it is slixmpp's PluginManager
    return [plugin for name in manager if isinstance(plugin := manager[name], Recovering)]
