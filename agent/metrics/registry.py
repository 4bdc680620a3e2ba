"""What the agent's and the sidecar's metrics share: a private registry, gauges read from the database.

Each process builds its own :class:`~prometheus_client.CollectorRegistry` (not the library's global
one): tests run several agents in one interpreter, and the process collectors of the global
registry are not what operators asked for. Values that other processes change (firing alerts,
pending notifications) are read from the database when Prometheus scrapes, on a read-only
connection, so they are as fresh as the scrape and cost nothing between scrapes.
"""

from __future__ import annotations

import bisect
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from loguru import logger
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.exceptions import XmppmonError
from agent.store.readers import reading

log = logger.bind(component="metrics")

#: Arrival-to-commit latency buckets, seconds: group commit waits up to flush_ms (10 ms by default).
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SEVERITIES = ("critical", "warning", "info")


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


Reader = Callable[[sqlite3.Connection], dict[str, float]]


class DatabaseGauge(Collector):
    """One gauge with one label, read from the database at each scrape.

    ``defaults`` are reported as 0 when the read does not name them (a severity with no firing
    alert), so a series exists from the first scrape. A database that cannot be read drops the
    gauge from that scrape (absent, not a false 0) and is logged once until it reads again.
    """

    def __init__(
        self, path: Path, name: str, documentation: str, label: str, read: Reader, defaults: Callable[[], list[str]]
    ) -> None:
        self.path, self.name, self.documentation, self.label = path, name, documentation, label
        self.read, self.defaults = read, defaults
        self._failing = False

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=[self.label])

    def collect(self) -> Iterator[Metric]:
        try:
            with reading(self.path, timeout=2.0) as conn:
                values = self.read(conn)
        except (XmppmonError, sqlite3.Error) as exc:
            if not self._failing:
                log.warning("metric {} unavailable: cannot read {}: {}", self.name, self.path, exc)
            self._failing = True
            return
        self._failing = False
        family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        for key in dict.fromkeys([*self.defaults(), *values]):
            family.add_metric([key], values.get(key, 0.0))
        yield family


class BulkHistogram(Collector):
    """A histogram fed a commit's worth of observations at once.

    prometheus-client's ``Histogram.observe`` takes a lock and walks the buckets per call (about
    2.5 µs here); a commit carries one arrival time per stanza, so this keeps plain bucket counts,
    updated with ``bisect`` under one lock per commit, and builds the family only when scraped.
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, counts, where = self.bounds, self.counts, bisect.bisect_left
        with self._lock:
            for value in values:
                counts[where(bounds, value)] += 1
                self.sum += value

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = list(self.counts), self.sum
        cumulative, running = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
            running += count
            cumulative.append((bound, running))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=total)
