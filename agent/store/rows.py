"""The SQL the writer runs for each kind of record, and how an event becomes a row."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from agent.events import Event, dumps_value, tag_values

INSERT_EVENT = "INSERT OR IGNORE INTO events (event_id, app, kind, ts, payload, received_at) VALUES (?, ?, ?, ?, ?, ?)"
#: After an INSERT OR IGNORE of history rows that met duplicates: the kinds of the ``?`` rows it
#: really inserted (their ids are the last ones, contiguous: a rowid table without AUTOINCREMENT).
KINDS_INSERTED = "SELECT kind, count(*) FROM events WHERE id > last_insert_rowid() - ? GROUP BY kind"
INSERT_API = (
    "INSERT OR IGNORE INTO api_calls (event_id, app, ts, api, method, path, status, request_id,"
    " latency_ms, detail, payload, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _upsert(table: str, key: tuple[str, ...], columns: tuple[str, ...]) -> str:
    names = key + columns + ("ts", "event_id", "received_at")
    updates = ", ".join(f"{name} = excluded.{name}" for name in names[len(key) :])
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        f" WHERE excluded.ts >= {table}.ts"
    )


UPSERT = {
    "device": _upsert("devices", ("app", "device_id"), ("payload",)),
    "tag": _upsert("tags", ("app", "device_id", "name"), ("value",)),
    "token": _upsert("tokens", ("app", "device_id"), ("token", "valid")),
    "push": _upsert("push_feedback", ("app", "device_id", "campaign_id"), ("action",)),
}
INSERT_QUARANTINE = (
    "INSERT OR IGNORE INTO quarantine (reason, raw, sender, event_id, app, received_at, digest)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
BUMP_COUNTER = (
    "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
SET_STATE = (
    "INSERT INTO agent_state (key, value, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)


@dataclass(slots=True)
class Quarantined:
    reason: str
    raw: str
    sender: str | None
    event_id: str | None
    app: str | None
    received_at: str

    def row(self) -> tuple[str | None, ...]:
        """The quarantine row; its digest (sender and raw text) makes a replay of the same event a no-op."""
        digest = hashlib.blake2b(f"{self.sender}\n{self.raw}".encode(), digest_size=16).hexdigest()
        return (self.reason, self.raw, self.sender, self.event_id, self.app, self.received_at, digest)


def state_row(event: Event, received_at: str) -> tuple[Any, ...]:
    p = event.payload
    if event.kind == "device":
        values: tuple[Any, ...] = (event.app, p["device_id"], event.text)
    elif event.kind == "tag":
        values = (event.app, p["device_id"], p["name"], dumps_value(p.get("value")))
    elif event.kind == "token":
        values = (event.app, p["device_id"], p["token"], int(p["valid"]))
    else:
        values = (event.app, p["device_id"], p["campaign_id"], p["action"])
    return (*values, event.ts, event.event_id, received_at)


def state_rows(event: Event, received_at: str) -> list[tuple[Any, ...]]:
    """The upsert rows of a state event: one, or one per tag name for a tag event with a ``tags`` map."""
    if event.kind != "tag" or "tags" not in event.payload:
        return [state_row(event, received_at)]
    device = event.payload["device_id"]
    return [(event.app, device, name, dumps_value(value), event.ts, event.event_id, received_at)
            for name, value in tag_values(event.payload)]  # fmt: skip
