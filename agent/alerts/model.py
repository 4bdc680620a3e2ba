"""The alert types: an observation, an alert's stored state, a transition to notify, an evaluation's outcome."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Final

Identity = tuple[str, str, str, str]  # source, app, code, api


@dataclass(frozen=True, slots=True)
class Observation:
    """One health observation (not an api event): a problem, or ``ok`` for (source, app, api)."""

    source: str
    code: str
    app: str = ""
    api: str = ""
    ok: bool = False
    detail: str | None = None


@dataclass(slots=True)
class Alert:
    """One alert identity's state, as stored in the ``alerts`` table (times as epoch seconds)."""

    id: int | None
    source: str
    app: str
    code: str
    api: str
    cls: str
    severity: str
    state: str = "inactive"
    count: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    window_start: float = 0.0
    window_count: int = 0
    fired_at: float | None = None
    notified_at: float | None = None
    resolved_at: float | None = None
    flaps: int = 0
    detail: str | None = None

    @property
    def identity(self) -> Identity:
        return (self.source, self.app, self.code, self.api)


#: The stored columns of an alert, in order, and those that hold times.
COLUMNS: Final = tuple(f.name for f in fields(Alert) if f.name != "id")
TIMES: Final = frozenset({"first_seen", "last_seen", "window_start", "fired_at", "notified_at", "resolved_at"})


@dataclass(slots=True)
class Transition:
    """A notification to write: the alert (its id is known once saved), what happened, a snapshot."""

    alert: Alert
    transition: str  # firing, repeat, resolved
    snapshot: dict[str, Any]


@dataclass(slots=True)
class Outcome:
    """What one evaluation changed: alerts to save, then transitions to notify."""

    dirty: list[Alert]
    transitions: list[Transition]
