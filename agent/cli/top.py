"""``xmppmon top``: a live view of the database, refreshed in place; ``--once`` prints one frame.

It reads the database only (through :mod:`agent.store.live`), so it works without the metrics
listener and while the agent is down. Arrivals are tallied incrementally by rowid: the first
frame reads the window, later ones only what was committed since.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.live import Live

from agent.cli.top_view import Frame, render
from agent.events import HISTORY_KINDS, STATE_KINDS
from agent.store.live import activity_tallies, agent_state, firing_alerts, sink_progress, state_updates
from agent.store.readers import reading

#: Sparkline slots across the window.
SLOTS = 30
_ORDER = [*sorted(HISTORY_KINDS), "api", *sorted(STATE_KINDS)]


class Watcher:
    """Reads frames from one database, keeping its tallies between frames."""

    def __init__(self, path: Path, minutes: float, heartbeat_seconds: float = 15.0) -> None:
        self.path, self.minutes, self.heartbeat_seconds = path, minutes, heartbeat_seconds
        self.bucket = minutes * 60.0 / SLOTS
        self.tallies = activity_tallies(self.bucket)

    def read(self, now: float | None = None) -> Frame:
        now = time.time() if now is None else now
        since = now - self.minutes * 60.0
        with reading(self.path) as conn:
            for tally in self.tallies:
                tally.read(conn, since)
            states = state_updates(conn, since, self.bucket)
            state = agent_state(conn)
            alerts = firing_alerts(conn)
            sinks = sink_progress(conn, now)
        events, api, quarantine = self.tallies
        arrivals = events.buckets + api.buckets + states
        last = int(now // self.bucket)
        slots = range(last - SLOTS + 1, last + 1)
        series = {kind: [arrivals.get((kind, s), 0) for s in slots] for kind in _ORDER}
        series = {kind: values for kind, values in series.items() if any(values) or kind in HISTORY_KINDS}
        minute = range(int((now - 60.0) // self.bucket) + 1, last + 1)
        covered = max(now - (minute.start * self.bucket), 1.0)
        rates = {kind: sum(arrivals.get((kind, s), 0) for s in minute) / covered for kind in series}
        recent: Counter[str] = Counter()
        for (name, _), count in quarantine.buckets.items():
            recent[name] += count
        classes = sorted(quarantine.total, key=lambda name: -quarantine.total[name])
        return Frame(
            now, self.path, self.minutes, state, series, rates,
            [(name, quarantine.total[name], recent[name]) for name in classes if quarantine.total[name]],
            alerts, sinks, self.heartbeat_seconds,
        )  # fmt: skip


def wait_key(timeout: float) -> str | None:
    """A key pressed within ``timeout`` seconds (stdin in cbreak mode), or None."""
    if not sys.stdin.isatty():
        time.sleep(timeout)
        return None
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return os.read(sys.stdin.fileno(), 1).decode(errors="replace") if ready else None


@contextlib.contextmanager
def cbreak() -> Iterator[None]:
    """Keys arrive one at a time, unechoed, while the view runs; the terminal is restored after."""
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(path: Path, minutes: float, interval: float, once: bool, heartbeat_seconds: float) -> int:
    watcher = Watcher(path, minutes, heartbeat_seconds)
    if once:
        console = Console(width=None if sys.stdout.isatty() else 120)
        console.print(render(watcher.read(), live=False))
        return 0
    console = Console()
    try:
        with cbreak(), Live(render(watcher.read()), console=console, screen=True, auto_refresh=False) as live:
            while wait_key(interval) not in ("q", "Q"):
                live.update(render(watcher.read()), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0
