"""Catching up after an outage, and the archive position that only covers what was replayed without a gap.

When a stream cannot be resumed (the server's hibernation expired, or its queue overflowed), the
events queued for the old session are in offline storage or only in the archive. After a new
session's initial presence, the agent pages through its own archive (``agent.session.archive``)
for messages from the Monitor API after the stored position. The results arrive as messages that
a plugin (``monitor_events``, through :class:`agent.plugin.Recovering`) stores like live ones; the
store's de-duplication absorbs the overlap with offline delivery and live traffic.

The position (``mam_last_id``, and ``mam_last_at``, the archive time of that message) is written
by the plugin in the commit of the message's events, so it never runs ahead of them; but only:

* for archived messages replayed by the catch-up, which arrive in archive order; and
* for live messages once the live stream is known to continue the archive without a gap
  (``track_live``): after a catch-up completed, and on streams resumed from such a session.

From the start of a new session until its catch-up completes, live messages leave the position
alone, and ``catchup_pending`` in ``agent_state`` says so: a crash, a cut connection or a stop in
the middle makes the next start (or the resumed stream) run the catch-up again from the position,
instead of skipping the range that was never replayed.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

from loguru import logger
from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout

from agent.events import utc_now
from agent.plugin import recovering
from agent.session.archive import replay
from agent.store import Store

log = logger.bind(component="archive")

#: The archive stamps a message before the agent receives it: start a time-bounded query earlier.
MARGIN_MINUTES = 5


def minus_minutes(stamp: str | None, minutes: int) -> str | None:
    """An archive start time a little before ``stamp``."""
    if stamp is None:
        return None
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")) - timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Recovery:
    """After a new session, replay the archive; after a resumption, report what the server replayed."""

    def __init__(self, client: ClientXMPP, store: Store, monitor_jid: str) -> None:
        self.client = client
        self.store = store
        self.monitor_jid = monitor_jid
        #: True from a new session until its catch-up completes (also restored from the database).
        self.pending = False

    def _track_live(self, on: bool, resumed: bool | None = None) -> None:
        for plugin in recovering(self.client):
            plugin.track_live = on
            if resumed is not None:
                plugin.resumed_stream = resumed

    async def restore(self) -> None:
        """A new process: was a catch-up interrupted? Then even a resumed stream must catch up."""
        state = await self.store.read_state()
        self.pending = state.get("catchup_pending") == "1"
        if not state.get("archive_from"):
            # The first start ever: without a position, a later catch-up starts from here.
            self.store.set_state("archive_from", utc_now())

    def connecting(self) -> None:
        """A connection attempt: until it says resumed, nothing proves the live stream has no gap."""
        self._track_live(False)

    def new_session(self) -> None:
        """A new session (not a resumption): a gap may exist until the catch-up completes."""
        self.pending = True
        self._track_live(False, resumed=False)
        self.store.set_state("catchup_pending", "1")

    def resumed(self) -> None:
        """A resumed stream continues the previous one: live positions count unless a catch-up is owed."""
        self._track_live(not self.pending, resumed=True)

    async def catch_up(self) -> None:
        """Replay the archive from the stored position; on success, live positions count again."""
        plugins = recovering(self.client)
        if not plugins:
            return
        self._track_live(False)
        for plugin in plugins:
            plugin.recovered.clear()
        state = await self.store.read_state()
        after = state.get("mam_last_id")
        since = state.get("mam_last_at") or await self.store.last_received_at() or state.get("archive_from")
        outcome = await replay(self.client, self.monitor_jid, after, minus_minutes(since, MARGIN_MINUTES))
        await self.store.barrier()
        if outcome.complete:
            self.pending = False
            self.store.set_state("catchup_pending", None)
            self._track_live(True)
        log.info(
            "catch-up: {}; recovered {} event(s) from offline storage and {} from the archive{}",
            outcome.text, sum(p.recovered["offline"] for p in plugins), sum(p.recovered["mam"] for p in plugins),
            "" if outcome.complete else "; it will run again",
        )  # fmt: skip

    async def report_resumption(self) -> None:
        """Log what the server replayed after ``<resumed/>``, once it has all been committed."""
        plugins = recovering(self.client)
        for plugin in plugins:
            plugin.recovered.clear()
        # The server replays its queue right after <resumed/>, before it answers anything sent
        # later: once a ping is answered, the replay has arrived.
        ping = self.client.plugin["xep_0199"]
        # An error answer also comes after the replay; a timeout is the keepalive's business.
        with contextlib.suppress(IqError, IqTimeout):
            await ping.send_ping(JID(self.client.boundjid.domain), timeout=30)
        await self.store.barrier()
        log.info("stream resumed: {} event(s) replayed by the server", sum(p.recovered["resume"] for p in plugins))
