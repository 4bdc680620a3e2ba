"""Alert state and notifications in SQL: what the alert rules (``agent.alerts``) decide, stored.

Runs on the connection the caller passes in (the agent's writer, or the sidecar's own connection
for the alerts it raises itself), inside the caller's transaction: nothing here opens or commits
one. Every transition writes one ``notifications`` row with a fresh idempotency key.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any, Final

import aiosqlite
import orjson

from agent.alerts import Alert, AlertRules, Identity
from agent.alerts.model import COLUMNS, TIMES
from agent.events import epoch, iso

_NAMES: Final = tuple(c.replace("cls", "class") for c in COLUMNS)
_SELECT: Final = "SELECT id, " + ", ".join(_NAMES) + " FROM alerts"
_INSERT: Final = f"INSERT INTO alerts ({', '.join(_NAMES)}) VALUES ({', '.join('?' * len(_NAMES))}) RETURNING id"
_KEY: Final = ("source", "app", "code", "api", "cls")
_UPDATE: Final = "UPDATE alerts SET " + ", ".join(f"{c} = ?" for c in COLUMNS if c not in _KEY) + " WHERE id = ?"
_INSERT_NOTIFICATION: Final = (
    "INSERT INTO notifications (key, alert_id, transition, alert, created_at) VALUES (?, ?, ?, ?, ?)"
)


def _to_row(alert: Alert) -> list[Any]:
    return [iso(v) if k in TIMES and v is not None else v
            for k in COLUMNS for v in (getattr(alert, k),)]  # fmt: skip


def _from_row(row: Any) -> Alert:
    values = {k: (epoch(v) if k in TIMES and v is not None else v)
              for k, v in zip(("id", *COLUMNS), row, strict=True)}  # fmt: skip
    return Alert(**values)  # type: ignore[arg-type]  # the columns are the dataclass's fields


async def apply_rules(
    conn: aiosqlite.Connection,
    rules: AlertRules,
    api_counts: Counter[tuple[str, str, int]] | None = None,
    now: float | None = None,
) -> int:
    """Evaluate ``rules`` on this batch and store what changed; return the notifications written."""
    now = time.time() if now is None else now
    if not rules.loaded:
        marks = ", ".join("?" * len(rules.sources))
        rows = await conn.execute_fetchall(
            f"{_SELECT} WHERE state IN ('pending', 'firing') AND source IN ({marks})", tuple(rules.sources)
        )
        rules.load(_from_row(row) for row in rows)
    stored: dict[Identity, Alert] = {}
    for identity in rules.needs(api_counts):
        rows = list(await conn.execute_fetchall(f"{_SELECT} WHERE source = ? AND app = ? AND code = ? AND api = ?",
                                                identity))  # fmt: skip
        if rows:
            stored[identity] = _from_row(rows[0])
    outcome = rules.evaluate(api_counts, stored, now)
    updates = []
    for alert in outcome.dirty:
        if alert.id is None:
            async with conn.execute(_INSERT, _to_row(alert)) as cursor:
                row = await cursor.fetchone()
            assert row is not None
            alert.id = int(row[0])
        else:
            values = _to_row(alert)
            updates.append([v for k, v in zip(COLUMNS, values, strict=True) if k not in _KEY] + [alert.id])
    if updates:
        await conn.executemany(_UPDATE, updates)
    if outcome.transitions:
        created = iso(now)
        notes = []
        for t in outcome.transitions:
            t.snapshot["alert_id"] = t.alert.id
            notes.append((str(uuid.uuid4()), t.alert.id, t.transition, orjson.dumps(t.snapshot).decode(), created))
        await conn.executemany(_INSERT_NOTIFICATION, notes)
    return len(outcome.transitions)
