"""One batch of the writer, in SQL: appends, upserts, quarantine, counters, state and alerts, one transaction."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import aiosqlite

from agent.alerts import AlertRules
from agent.events import HISTORY_KINDS, Event, utc_now
from agent.store.alerts import apply_rules
from agent.store.drift import record_drift, sightings
from agent.store.identity import Identity
from agent.store.rows import (
    BUMP_COUNTER,
    INSERT_API,
    INSERT_EVENT,
    INSERT_QUARANTINE,
    KINDS_INSERTED,
    SET_STATE,
    UPSERT,
    Quarantined,
    state_rows,
)


@dataclass(slots=True)
class Batch:
    """What the writer collected since its last commit; ``position`` is the XEP-0198 (sm_id, h) it covers."""

    events: list[tuple[Event, str]]
    quarantine: list[Quarantined]
    counters: Counter[str]
    state: dict[str, str | None]
    position: tuple[str, int | None] | None = None


@dataclass(slots=True)
class Commit:
    """What one commit wrote, for the listeners of :attr:`Store.on_commit` (metrics, benchmarks).

    ``arrivals`` holds the ``time.perf_counter()`` of each stanza's submission when
    :attr:`Store.track_arrivals` is set, else it is empty: timing every stanza costs a list append.
    """

    appended: int
    upserted: int
    duplicates: int
    quarantined: int
    committed_at: float
    arrivals: list[float] = field(default_factory=list)
    #: Rows written per event kind: appended (history, api) or inserted/updated (state kinds).
    kinds: Counter[str] = field(default_factory=Counter)
    #: The persistent counters this commit added (stanzas, foreign_stanzas, events_received, ...).
    counters: Counter[str] = field(default_factory=Counter)
    #: The reason of each quarantined item written.
    quarantine_reasons: list[str] = field(default_factory=list)


async def write_batch(conn: aiosqlite.Connection, rules: AlertRules, identity: Identity, batch: Batch) -> Commit:
    """Write one batch in one ``BEGIN IMMEDIATE`` transaction and commit it; roll back is the caller's."""
    events, quarantine = batch.events, batch.quarantine
    # Copies: a failed attempt is retried with the batch as it was, not with this attempt's additions.
    counters, state = Counter(batch.counters), dict(batch.state)
    history: list[tuple[Any, ...]] = []
    api: list[tuple[Any, ...]] = []
    upserts: dict[str, list[tuple[Any, ...]]] = {}
    drifted: list[tuple[Event, str]] = []
    for event, received_at in events:
        kind, p = event.kind, event.payload
        if kind in HISTORY_KINDS:
            history.append((event.event_id, event.app, kind, event.ts, event.text, received_at))
        elif kind == "api":
            api.append((
                event.event_id, event.app, event.ts, p["api"], p.get("method"), p.get("path"),
                p["status"], p.get("request_id"), p.get("latency_ms"), p.get("detail"),
                event.text, received_at,
            ))  # fmt: skip
        else:
            upserts.setdefault(kind, []).extend(state_rows(event, received_at))
            if event.drift:
                drifted.append((event, received_at))
    await conn.execute("BEGIN IMMEDIATE")
    identity.begin()
    received = len(history) + len(api)
    history, restamped = await identity.split(conn, history, "events", 0, 3)
    api, restamped_api = await identity.split(conn, api, "api_calls", 0, 2)
    if drifted:  # before the rules: a new value's alert is evaluated in this transaction
        await record_drift(conn, rules, sightings(drifted, counters))
    appended = 0  # history and api rows really inserted: the rest were duplicates
    kinds: Counter[str] = Counter()
    if history:
        cursor = await conn.executemany(INSERT_EVENT, history)
        inserted = max(cursor.rowcount, 0)
        appended += inserted
        if inserted == len(history):
            kinds.update(map(itemgetter(2), history))
        elif inserted:  # some were duplicates: ask which kinds the new rows have
            kinds.update(dict(await conn.execute_fetchall(KINDS_INSERTED, (inserted,))))  # type: ignore[arg-type]
    if api:
        # Alerts count each call once: on a redelivery, count only the rows really inserted.
        await conn.execute("SAVEPOINT api")
        cursor = await conn.executemany(INSERT_API, api)
        if max(cursor.rowcount, 0) < len(api):
            await conn.execute("ROLLBACK TO api")
            api = await _new_api_rows(conn, api)
            cursor = await conn.executemany(INSERT_API, api)
        await conn.execute("RELEASE api")
        appended += max(cursor.rowcount, 0)
        if cursor.rowcount > 0:
            kinds["api"] = cursor.rowcount
    if api or rules.has_pending or rules.sweep_due():
        await apply_rules(conn, rules, Counter((r[1], r[3], r[6]) for r in api))
    for kind, rows in upserts.items():
        cursor = await conn.executemany(UPSERT[kind], rows)
        if cursor.rowcount > 0:  # a replay older than the stored value changes nothing
            kinds[kind] = cursor.rowcount
    quarantined = 0
    reasons: list[str] = []  # of the rows really quarantined (a replay of one adds none)
    for q in quarantine:  # one statement each: quarantine is rare, and which rows are new matters
        cursor = await conn.execute(INSERT_QUARANTINE, q.row())
        if cursor.rowcount > 0:
            reasons.append(q.reason)
    quarantined = len(reasons)
    if quarantine:
        counters["quarantined"] += quarantined
        counters["quarantine_replays"] += len(quarantine) - quarantined
    duplicates = received - appended
    if restamped + restamped_api:
        counters["events_restamped"] += restamped + restamped_api  # of the duplicates: same id, another ts
    if events:
        counters["events_received"] += len(events)
    if duplicates:
        counters["events_duplicate"] += duplicates
    if counters:
        await conn.executemany(BUMP_COUNTER, [(k, v) for k, v in counters.items() if v])
    if batch.position is not None:
        state["sm_id"] = batch.position[0]
        state["sm_handled"] = str(batch.position[1])
    if state:
        now = utc_now()
        await conn.executemany(SET_STATE, [(k, v, now) for k, v in state.items()])
    await conn.commit()
    identity.committed()
    rules.committed()
    return Commit(
        appended, sum(map(len, upserts.values())), duplicates, quarantined, time.perf_counter(),
        kinds=kinds, counters=counters, quarantine_reasons=reasons,
    )  # fmt: skip


async def _new_api_rows(conn: aiosqlite.Connection, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows of ``rows`` not yet in api_calls, each once (a redelivery's slow path)."""
    seen: set[tuple[str, str]] = set()
    for start in range(0, len(rows), 400):
        chunk = rows[start : start + 400]
        values = ", ".join("(?, ?)" for _ in chunk)
        params = [v for r in chunk for v in (r[2], r[0])]
        found = await conn.execute_fetchall(
            f"SELECT ts, event_id FROM api_calls WHERE (ts, event_id) IN (VALUES {values})",
            params,
        )
        seen.update((r[0], r[1]) for r in found)
    fresh = []
    for row in rows:
        if (row[2], row[0]) not in seen:
            seen.add((row[2], row[0]))
            fresh.append(row)
    return fresh
