"""The agent's metrics, fed by the writer's commit hook and the session's hooks.

Nothing here runs per event: :meth:`AgentMetrics.committed` runs once per commit with what the
commit wrote (:class:`agent.store.Commit`), so ``xmppmon_events_committed_total{kind}`` counts
exactly the rows this process put in the database (history and api rows appended, state rows
inserted or updated), duplicates excluded. The session's hooks set ``xmppmon_session_up``, count
``xmppmon_reconnects_total{how}`` (every connection attempt after the process's first: ``resumed``,
``new`` or ``failed``) and set ``xmppmon_ping_rtt_seconds``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from agent.events import KINDS
from agent.metrics.http import Listener, serve
from agent.metrics.registry import COMMIT_BUCKETS, SEVERITIES, BulkHistogram, DatabaseGauge, new_registry
from agent.reasons import CLASSES, reason_class
from agent.store.live import firing_by_severity

if TYPE_CHECKING:
    from agent.config import Settings
    from agent.health import Health
    from agent.session import MonitorSession
    from agent.store import Commit, Store


class AgentMetrics:
    """The agent's registry and the listeners that keep it current."""

    def __init__(self, store: Store, session: MonitorSession, health: Health) -> None:
        self.registry = r = new_registry()
        self.committed = Counter(
            "xmppmon_events_committed", "Events written to the database, per kind (duplicates excluded)", ["kind"],
            registry=r,
        )  # fmt: skip
        self.stanzas = Counter("xmppmon_stanzas_received", "Message stanzas with events received", registry=r)
        self.duplicates = Counter("xmppmon_events_duplicate", "Events already in the database, dropped", registry=r)
        self.quarantined = Counter(
            "xmppmon_quarantined", "Invalid events put in quarantine, per reason class", ["reason"], registry=r
        )
        self.foreign = Counter(
            "xmppmon_foreign_stanzas", "Event stanzas from senders other than the Monitor API, dropped", registry=r
        )
        self.session_up = Gauge("xmppmon_session_up", "1 while the XMPP session is up", registry=r)
        self.reconnects = Counter(
            "xmppmon_reconnects", "Connection attempts after the first, by outcome", ["how"], registry=r
        )
        self.ping_rtt = Gauge("xmppmon_ping_rtt_seconds", "Round-trip time of the newest XEP-0199 ping", registry=r)
        backlog = Gauge("xmppmon_writer_backlog", "Records waiting for the writer's next commit", registry=r)
        backlog.set_function(lambda: store.pending)
        self.commit_seconds = BulkHistogram(
            "xmppmon_commit_seconds", "Time from a stanza's arrival to the commit of its events", COMMIT_BUCKETS
        )
        r.register(self.commit_seconds)
        age = Gauge("xmppmon_last_event_age_seconds", "Seconds since the newest event arrived", registry=r)
        age.set_function(health.last_event_age)
        r.register(
            DatabaseGauge(
                store.settings.path, "xmppmon_alerts_firing", "Alerts firing, per severity", "severity",
                lambda conn: {k: float(v) for k, v in firing_by_severity(conn).items()}, lambda: list(SEVERITIES),
            )
        )  # fmt: skip
        # Every label value known up front has a series from the first scrape, so rate() works at once.
        self._kinds = {kind: self.committed.labels(kind) for kind in sorted(KINDS)}
        self._classes = {name: self.quarantined.labels(name) for name in CLASSES}
        self._how = {how: self.reconnects.labels(how) for how in ("resumed", "new", "failed")}
        self._attempts = 0
        store.track_arrivals = True
        store.on_commit.append(self.committed_hook)
        session.hooks.up.append(self._up)
        session.hooks.down.append(self._down)
        session.hooks.failed.append(self._failed)
        session.hooks.rtt.append(self.ping_rtt.set)

    def committed_hook(self, commit: Commit) -> None:
        """The writer's commit hook: count what one commit wrote."""
        for kind, count in commit.kinds.items():
            child = self._kinds.get(kind) or self.committed.labels(kind)
            child.inc(count)
        counters = commit.counters
        if stanzas := counters.get("stanzas"):
            self.stanzas.inc(stanzas)
        if commit.duplicates:
            self.duplicates.inc(commit.duplicates)
        if foreign := counters.get("foreign_stanzas"):
            self.foreign.inc(foreign)
        for reason in commit.quarantine_reasons:
            self._classes[reason_class(reason)].inc()
        if commit.arrivals:
            at = commit.committed_at
            self.commit_seconds.observe_many([at - arrival for arrival in commit.arrivals])

    def _attempt(self, how: str) -> None:
        self._attempts += 1
        if self._attempts > 1:
            self._how[how].inc()

    def _up(self, resumed: bool) -> None:
        self.session_up.set(1)
        self._attempt("resumed" if resumed else "new")

    def _down(self, _reason: str) -> None:
        self.session_up.set(0)

    def _failed(self, _reason: str) -> None:
        self.session_up.set(0)
        self._attempt("failed")


@contextlib.contextmanager
def agent_metrics(
    settings: Settings, store: Store, session: MonitorSession, health: Health
) -> Iterator[AgentMetrics | None]:
    """Metrics and their listener while the block runs; nothing when ``metrics.listen`` is empty."""
    if not settings.metrics.listen:
        yield None
        return
    metrics = AgentMetrics(store, session, health)
    listener: Listener = serve(settings.metrics.listen, metrics.registry, health.reasons, "XMPPMON_METRICS__LISTEN")
    try:
        yield metrics
    finally:
        listener.close()
