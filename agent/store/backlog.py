"""What waits for the writer's next commit, in arrival order, and how big it is.

Records (events and quarantined items), counter increments, ``agent_state`` values and barriers
wait here between commits. :meth:`Backlog.take` hands at most ``limit`` records to one commit, so
that after a full disk every freed megabyte is progress instead of one all-or-nothing transaction;
a barrier is resolved by the commit that covers everything submitted before it. Counters and state
given after some records (a stanza's ``mam_last_id`` after its events) are staged behind them and
written only by the commit that covers those records: a position never runs ahead of the rows it
stands for, however the backlog is split. A commit that
fails puts its share back (:meth:`Backlog.put_back`) in front of what arrived meanwhile, so it is
retried in order. The backlog's size is counted in records and in bytes (payloads and raw text).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from agent.events import Event
from agent.store.batch import Batch
from agent.store.rows import Quarantined

#: Bytes counted per record beyond its text: the row's other columns and Python's objects. Measured
#: with tracemalloc: an activity event parsed and held takes 774 bytes for 79 of payload text.
RECORD_OVERHEAD = 700


@dataclass(slots=True)
class Mark:
    """A barrier: resolved once the events and quarantined items submitted before it are committed."""

    future: asyncio.Future[None]
    sm_id: str | None
    handled: int | None
    events_upto: int = 0
    quarantine_upto: int = 0


@dataclass(slots=True)
class Stage:
    """Counter increments and state values given once ``events_upto``/``quarantine_upto`` records were in."""

    events_upto: int
    quarantine_upto: int
    counters: Counter[str] = field(default_factory=Counter)
    state: dict[str, str | None] = field(default_factory=dict)


@dataclass(slots=True)
class Taken:
    """One commit's share of the backlog: the batch to write, the barriers it resolves, arrival times."""

    batch: Batch
    marks: list[Mark]
    arrivals: list[tuple[int, float]]
    size: int
    #: What the batch's counters and state were made of, to put back if the commit fails.
    stages: list[Stage] = field(default_factory=list)
    free: Stage = field(default_factory=lambda: Stage(0, 0))


def _size(event: Event) -> int:
    return len(event.text) + RECORD_OVERHEAD


@dataclass
class Backlog:
    events: list[tuple[Event, str]] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)
    #: Counters and state tied to no record (the writer's heartbeat): written by the next commit.
    counters: Counter[str] = field(default_factory=Counter)
    state: dict[str, str | None] = field(default_factory=dict)
    #: Counters and state given after records, in order: each waits for the records before it.
    stages: list[Stage] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    #: (events submitted up to then, perf_counter) per submission, for arrival-to-commit latency.
    arrivals: list[tuple[int, float]] = field(default_factory=list)
    #: Bytes of the records waiting.
    bytes: int = 0
    # Records ever taken by commits that succeeded, and ever added: barriers compare against them.
    _events_done: int = 0
    _quarantine_done: int = 0
    _events_seen: int = 0
    _quarantine_seen: int = 0

    @property
    def records(self) -> int:
        """Events and quarantined items waiting."""
        return len(self.events) + len(self.quarantine)

    def has_work(self) -> bool:
        return bool(self.events or self.quarantine or self.counters or self.state or self.marks or self.stages)

    def _stage(self) -> Stage:
        """The stage for what is given now: after every record added so far."""
        last = self.stages[-1] if self.stages else None
        if last and last.events_upto == self._events_seen and last.quarantine_upto == self._quarantine_seen:
            return last
        stage = Stage(self._events_seen, self._quarantine_seen)
        self.stages.append(stage)
        return stage

    def count(self, name: str, amount: int) -> None:
        self._stage().counters[name] += amount

    def set_state(self, key: str, value: str | None) -> None:
        self._stage().state[key] = value

    def add_events(self, events: list[Event], received_at: str, arrived: float | None) -> None:
        self.events.extend((event, received_at) for event in events)
        self._events_seen += len(events)
        self.bytes += sum(map(_size, events))
        if arrived is not None:
            self.arrivals.append((self._events_seen, arrived))

    def add_quarantine(self, item: Quarantined) -> None:
        self.quarantine.append(item)
        self._quarantine_seen += 1
        self.bytes += len(item.raw) + RECORD_OVERHEAD

    def add_mark(self, mark: Mark) -> None:
        mark.events_upto, mark.quarantine_upto = self._events_seen, self._quarantine_seen
        self.marks.append(mark)

    def forget_stream(self) -> None:
        """Barriers still waiting must not write a discarded stream's id back."""
        for mark in self.marks:
            mark.sm_id = None

    def take(self, limit: int) -> Taken:
        """The oldest ``limit`` records, with the counters, state and barriers they complete."""
        events, self.events = self.events[:limit], self.events[limit:]
        room = max(limit - len(events), 0)
        quarantine, self.quarantine = self.quarantine[:room], self.quarantine[room:]
        events_done = self._events_done + len(events)
        quarantine_done = self._quarantine_done + len(quarantine)
        covered = [m for m in self.marks if m.events_upto <= events_done and m.quarantine_upto <= quarantine_done]
        self.marks = self.marks[len(covered) :]  # marks are in order: the covered ones come first
        arrivals = [a for a in self.arrivals if a[0] <= events_done]
        self.arrivals = self.arrivals[len(arrivals) :]
        last = next((m for m in reversed(covered) if m.sm_id is not None), None)
        position = None if last is None or last.sm_id is None else (last.sm_id, last.handled)
        size = sum(_size(e) for e, _ in events) + sum(len(q.raw) + RECORD_OVERHEAD for q in quarantine)
        self.bytes -= size
        ready = 0
        for stage in self.stages:  # in order of the records they follow: the ready ones come first
            if stage.events_upto > events_done or stage.quarantine_upto > quarantine_done:
                break
            ready += 1
        stages, self.stages = self.stages[:ready], self.stages[ready:]
        free = Stage(0, 0, self.counters, self.state)
        counters, state = Counter(free.counters), dict(free.state)
        for stage in stages:
            counters.update(stage.counters)
            state.update(stage.state)
        batch = Batch(events, quarantine, counters, state, position)
        self.counters, self.state = Counter(), {}
        self._events_done, self._quarantine_done = events_done, quarantine_done
        return Taken(batch, covered, arrivals, size, stages, free)

    def put_back(self, taken: Taken) -> None:
        """A commit failed: its share goes back in front of what arrived meanwhile."""
        batch = taken.batch
        self.events = batch.events + self.events
        self.quarantine = batch.quarantine + self.quarantine
        self.counters.update(taken.free.counters)
        self.state = taken.free.state | self.state
        self.stages = taken.stages + self.stages
        self.marks = taken.marks + self.marks
        self._events_done -= len(batch.events)
        self._quarantine_done -= len(batch.quarantine)
        self.arrivals = taken.arrivals + self.arrivals
        self.bytes += taken.size
