"""The sidecar's metrics: per sink, notifications delivered, still pending, and whether it answers.

``xmppmon_notifications_delivered_total{sink}`` counts the notifications this process delivered
(confirmed by the sink and committed); ``xmppmon_notifications_pending{sink}`` is read from the
database at each scrape (the agent adds notifications in its own transactions);
``xmppmon_sink_up{sink}`` is 0 while a sink refuses us (401/403) or its last round reached it for
no notification at all (timeouts, 5xx, connection refused), 1 once a round is delivered or
dead-lettered by the sink (a 400 is an answer), and 1 before the first round.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter, Gauge

from agent.metrics.http import serve
from agent.metrics.registry import DatabaseGauge, new_registry
from agent.store.live import sink_progress

if TYPE_CHECKING:
    from agent.config import Settings


class _Attempt(Protocol):
    @property
    def status(self) -> str: ...


class Round(Protocol):
    """What the hook reads of a delivery round (``agent.sidecar.http.Round``, a layer above)."""

    @property
    def delivered(self) -> int: ...
    @property
    def attempts(self) -> Sequence[_Attempt]: ...


class SidecarMetrics:
    """``failing`` is the runner's live set of sinks refusing us (401/403), read at each scrape."""

    def __init__(self, settings: Settings, sinks: list[str], failing: set[str]) -> None:
        self.registry = r = new_registry()
        #: The sinks, read at each scrape; a reload changes them (:meth:`sinks_changed`).
        self.sinks, self._failing = sinks, failing
        self.delivered = Counter(
            "xmppmon_notifications_delivered", "Notifications delivered and confirmed, per sink", ["sink"], registry=r
        )
        self.up = up = Gauge("xmppmon_sink_up", "1 while the sink answers deliveries", ["sink"], registry=r)
        #: Sinks whose last round reached them for no notification.
        self.unanswered: set[str] = set()
        for sink in sinks:
            self.delivered.labels(sink)
            up.labels(sink).set_function(functools.partial(self._up, sink, failing))

        def pending(conn: sqlite3.Connection) -> dict[str, float]:
            rows = sink_progress(conn, time.time(), sinks, last_delivered=False)
            return {row.sink: float(row.pending) for row in rows if row.sink in sinks}

        r.register(
            DatabaseGauge(
                settings.store.path, "xmppmon_notifications_pending", "Notifications not yet delivered, per sink",
                "sink", pending, lambda: list(sinks),
            )
        )  # fmt: skip

    def sinks_changed(self, names: list[str]) -> None:
        """A reload changed the sinks: series for the new ones, none left for the removed ones."""
        for sink in [s for s in self.sinks if s not in names]:
            self.delivered.remove(sink)
            self.up.remove(sink)
            self.unanswered.discard(sink)
        for sink in [s for s in names if s not in self.sinks]:
            self.delivered.labels(sink)
            self.up.labels(sink).set_function(functools.partial(self._up, sink, self._failing))
        self.sinks[:] = names

    def _up(self, sink: str, failing: set[str]) -> float:
        return 0.0 if sink in failing or sink in self.unanswered else 1.0

    def round_hook(self, sink: str, rnd: Round) -> None:
        """The runner's hook after each recorded delivery round."""
        if rnd.delivered:
            self.delivered.labels(sink).inc(rnd.delivered)
        if rnd.attempts:
            if any(a.status in ("delivered", "dead") for a in rnd.attempts):
                self.unanswered.discard(sink)
            else:
                self.unanswered.add(sink)


@contextlib.contextmanager
def sidecar_metrics(settings: Settings, sinks: list[str], failing: set[str]) -> Iterator[SidecarMetrics | None]:
    """Metrics and their listener (``/metrics``, ``/healthz``) while the block runs, if configured."""
    listen = settings.sidecar.metrics_listen
    if not listen:
        yield None
        return
    metrics = SidecarMetrics(settings, sinks, failing)
    listener = serve(listen, metrics.registry, None, "XMPPMON_SIDECAR__METRICS_LISTEN")
    try:
        yield metrics
    finally:
        listener.close()
