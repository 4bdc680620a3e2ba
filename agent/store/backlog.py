"""What waits for the writer's next commit, in arrival order, and how big it is.

Records (events and quarantined items), counter increments, ``agent_state`` values and barriers
wait here between commits. :meth:`Backlog.take` hands them to one commit; a commit that fails
puts them back (:meth:`Backlog.put_back`) in front of what arrived meanwhile, so they are retried
in order.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from agent.events import Event
from agent.store.batch import Batch
from agent.store.rows import Quarantined


@dataclass(slots=True)
class Mark:
    """A barrier: resolved when everything submitted before it is committed."""

    future: asyncio.Future[None]
    sm_id: str | None
    handled: int | None


@dataclass(slots=True)
class Taken:
    """One commit's share of the backlog: the batch to write, its barriers and arrival times."""

    batch: Batch
    marks: list[Mark]
    arrivals: list[float]


@dataclass
class Backlog:
    events: list[tuple[Event, str]] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    state: dict[str, str | None] = field(default_factory=dict)
    marks: list[Mark] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    @property
    def records(self) -> int:
        """Events and quarantined items waiting."""
        return len(self.events) + len(self.quarantine)

    def has_work(self) -> bool:
        return bool(self.events or self.quarantine or self.counters or self.state or self.marks)

    def forget_stream(self) -> None:
        """Barriers still waiting must not write a discarded stream's id back."""
        for mark in self.marks:
            mark.sm_id = None

    def take(self) -> Taken:
        """Everything waiting, for one commit."""
        marks = self.marks
        last = next((m for m in reversed(marks) if m.sm_id is not None), None)
        position = None if last is None or last.sm_id is None else (last.sm_id, last.handled)
        taken = Taken(Batch(self.events, self.quarantine, self.counters, self.state, position), marks, self.arrivals)
        self.events, self.quarantine, self.counters, self.state = [], [], Counter(), {}
        self.marks, self.arrivals = [], []
        return taken

    def put_back(self, taken: Taken) -> None:
        """A commit failed: its share goes back in front of what arrived meanwhile."""
        batch = taken.batch
        self.events = batch.events + self.events
        self.quarantine = batch.quarantine + self.quarantine
        self.counters.update(batch.counters)
        self.state = batch.state | self.state
        self.marks = taken.marks + self.marks
        self.arrivals = taken.arrivals + self.arrivals
