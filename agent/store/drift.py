"""Schema drift in SQL: values outside the contract's known sets, each recorded once, counted, alerted once.

An event whose push action (or tag value shape) the contract does not name is stored as received
(``agent.events`` lists its drift). Here, in the transaction that stores it, each drifting value
bumps the ``schema_drift:<kind>.<field>`` counter and is recorded in ``schema_drift``; a value
recorded for the first time raises one ``schema_drift`` warning alert (source ``schema``). At most
:data:`MAX_VALUES` values per field are recorded, so an upstream that puts ids into an enumerated
field cannot flood the table or the operators: past it, values are only counted.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import aiosqlite
from loguru import logger

from agent.alerts import AlertRules, Observation
from agent.events import Event

log = logger.bind(component="store")

MAX_VALUES: Final = 20
_UPDATE: Final = "UPDATE schema_drift SET count = count + ?, last_seen = ? WHERE kind = ? AND field = ? AND value = ?"
_COUNT: Final = "SELECT count(*) FROM schema_drift WHERE kind = ? AND field = ?"
_INSERT: Final = (
    "INSERT INTO schema_drift (kind, field, value, app, event_id, first_seen, last_seen, count)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(slots=True)
class Sighting:
    """One drifting value in one batch: where it was first seen and how often."""

    kind: str
    field: str
    value: str
    app: str
    event_id: str
    seen_at: str
    count: int = 0

    @property
    def label(self) -> str:
        """``push.action=clicked``: the alert's discriminator and the operator's words."""
        return f"{self.kind}.{self.field}={self.value}"

    def observation(self) -> Observation:
        detail = (
            f"{self.kind} events carry {self.field} {self.value!r}, outside the contract's known set"
            f" (first: event {self.event_id} of app {self.app}); stored as received"
        )
        return Observation("schema", "schema_drift", app=self.app, api=self.label[:200], detail=detail)


def sightings(events: Iterable[tuple[Event, str]], counters: Counter[str]) -> list[Sighting]:
    """The distinct drifting values of ``events``; bumps ``schema_drift:<kind>.<field>`` in ``counters``."""
    found: dict[tuple[str, str], Sighting] = {}
    for event, received_at in events:
        for name, value in event.drift or ():
            counters[f"schema_drift:{name}"] += 1
            kind, _, field = name.partition(".")
            text = "".join(c if c.isprintable() else "?" for c in value[:120])
            seen = found.get((name, text))
            if seen is None:
                seen = found[(name, text)] = Sighting(kind, field, text, event.app, event.event_id, received_at)
            seen.count += 1
    return list(found.values())


async def record_drift(conn: aiosqlite.Connection, rules: AlertRules | None, seen: list[Sighting]) -> list[Sighting]:
    """Record ``seen`` in the writer's transaction; observe an alert for each new value; return the new ones."""
    new = []
    for s in seen:
        cursor = await conn.execute(_UPDATE, (s.count, s.seen_at, s.kind, s.field, s.value))
        if cursor.rowcount:
            continue
        rows = await conn.execute_fetchall(_COUNT, (s.kind, s.field))
        if next(iter(rows))[0] >= MAX_VALUES:
            continue
        await conn.execute(_INSERT, (s.kind, s.field, s.value, s.app, s.event_id, s.seen_at, s.seen_at, s.count))
        new.append(s)
        if rules is not None:
            rules.observe(s.observation())
            log.bind(app=s.app, event_id=s.event_id).warning("schema drift: {}", s.observation().detail)
    return new


def record_drift_sync(conn: sqlite3.Connection, seen: list[Sighting]) -> list[Sighting]:
    """:func:`record_drift` for a plain sqlite3 connection (quarantine replay), without alerts.

    Alerts belong to the agent's writer, which caches them: another process must not write them.
    """
    new = []
    for s in seen:
        if conn.execute(_UPDATE, (s.count, s.seen_at, s.kind, s.field, s.value)).rowcount:
            continue
        if conn.execute(_COUNT, (s.kind, s.field)).fetchone()[0] >= MAX_VALUES:
            continue
        conn.execute(_INSERT, (s.kind, s.field, s.value, s.app, s.event_id, s.seen_at, s.seen_at, s.count))
        new.append(s)
    return new
