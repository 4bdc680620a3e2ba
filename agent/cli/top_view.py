"""How one frame of ``xmppmon top`` looks: rich tables built from a :class:`Frame`, nothing read here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from agent.events import epoch
from agent.store.live import SinkProgress

BARS = "▁▂▃▄▅▆▇█"
#: Alerts listed, most severe first; the rest are counted (``xmppmon alerts`` lists them all).
MAX_ALERTS = 10


@dataclass
class Frame:
    """What one refresh read from the database."""

    at: float
    database: Path
    minutes: float
    state: dict[str, str | None]
    #: Per kind: arrivals per bucket, oldest first; state kinds count keys updated.
    series: dict[str, list[int]]
    #: Per kind: events per second over the last minute.
    rates: dict[str, float]
    #: (reason class, total, within the window)
    quarantine: list[tuple[str, int, int]]
    alerts: list[dict[str, Any]]
    sinks: list[SinkProgress]
    heartbeat_seconds: float = 15.0
    notes: list[str] = field(default_factory=list)


def sparkline(values: list[int]) -> str:
    """One character per value, scaled to the largest; a blank for zero."""
    top = max(values, default=0)
    if not top:
        return " " * len(values)
    return "".join(" " if v <= 0 else BARS[min(len(BARS) - 1, (v * len(BARS) - 1) // top)] for v in values)


def _seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _age(text: str | None, now: float) -> str:
    return _seconds(max(0.0, now - epoch(text))) if text else "-"


def header(frame: Frame, live: bool) -> RenderableType:
    state, now = frame.state, frame.at
    session = state.get("session") or "never started"
    style = "green" if session.startswith("connected") else "red"
    clock = time.strftime("%H:%M:%S UTC", time.gmtime(now))
    line = Text.assemble(("xmppmon top", "bold"), f"  {frame.database}  {clock}  ", ("q quits" if live else "", "dim"))
    status = Text.assemble("session ", (session, f"bold {style}"))
    if session.startswith("connected"):
        status.append(f"  since {_age(state.get('connected_since'), now)}")
    rtt = state.get("last_ping_rtt_ms")
    status.append(f"  ping {rtt} ms ({_age(state.get('last_ping_at'), now)} ago)" if rtt else "  ping -")
    status.append(f"  reconnects {state.get('reconnects') or 0}")
    beat = state.get("heartbeat")
    stale = beat is not None and now - epoch(beat) > 3 * frame.heartbeat_seconds
    status.append(f"  heartbeat {_age(beat, now)} ago", style="bold red" if stale else "")
    if stale:
        status.append(" (agent down?)", style="bold red")
    status.append(f"  writer backlog {state.get('writer_backlog') or 0}")
    lines: list[RenderableType] = [line, status]
    if state.get("last_error") and not session.startswith("connected"):
        lines.append(Text(f"last error: {state['last_error']}", style="red"))
    lines.extend(Text(note, style="yellow") for note in frame.notes)
    return Group(*lines)


def events_table(frame: Frame) -> Table:
    table = Table(title=f"Events (last {frame.minutes:g} min)", title_justify="left", expand=False)
    table.add_column("kind")
    table.add_column("events/s", justify="right")
    table.add_column(f"{frame.minutes:g} min", justify="right")
    table.add_column("activity", no_wrap=True)
    for kind, values in frame.series.items():
        table.add_row(kind, f"{frame.rates.get(kind, 0.0):,.1f}", f"{sum(values):,}", sparkline(values))
    if not frame.series:
        table.add_row("-", "0.0", "0", "")
    return table


def quarantine_table(frame: Frame) -> Table:
    table = Table(title="Quarantine by reason", title_justify="left")
    table.add_column("reason")
    table.add_column("total", justify="right")
    table.add_column(f"last {frame.minutes:g} min", justify="right")
    for name, total, recent in frame.quarantine:
        table.add_row(name, f"{total:,}", f"{recent:,}", style="yellow" if recent else "")
    if not frame.quarantine:
        table.add_row("none", "0", "0")
    return table


def alerts_table(frame: Frame) -> Table:
    table = Table(title=f"Firing alerts ({len(frame.alerts)})", title_justify="left")
    for column in ("severity", "source", "code", "app", "api", "count", "since"):
        table.add_column(column, justify="right" if column == "count" else "left")
    colours = {"critical": "bold red", "warning": "yellow"}
    for alert in frame.alerts[:MAX_ALERTS]:
        table.add_row(
            Text(alert["severity"], style=colours.get(alert["severity"], "")), alert["source"], str(alert["code"]),
            alert["app"] or "-", alert["api"] or "-", str(alert["count"]), _age(alert["since"], frame.at),
        )  # fmt: skip
    if not frame.alerts:
        table.add_row("none", "", "", "", "", "", "")
    elif len(frame.alerts) > MAX_ALERTS:
        table.add_row(f"+{len(frame.alerts) - MAX_ALERTS} more", "", "", "", "", "", "", style="dim")
    return table


def sinks_table(frame: Frame) -> Table:
    table = Table(title="Sinks", title_justify="left")
    for column in ("sink", "pending", "delivery lag", "last delivered", "failing"):
        table.add_column(column, justify="right" if column in ("pending", "delivery lag") else "left")
    for sink in frame.sinks:
        lag = _seconds(sink.lag_seconds) if sink.pending else "-"
        table.add_row(
            sink.sink, f"{sink.pending:,}", lag, f"{_age(sink.last_delivered, frame.at)} ago" if sink.last_delivered
            else "never", Text(sink.failing or "-", style="bold red" if sink.failing else ""),
            style="yellow" if sink.pending else "",
        )  # fmt: skip
    if not frame.sinks:
        table.add_row("none (no sidecar has run)", "", "", "", "")
    return table


def render(frame: Frame, live: bool = True) -> RenderableType:
    tables = events_table(frame), quarantine_table(frame), alerts_table(frame), sinks_table(frame)
    return Group(header(frame, live), *tables)
