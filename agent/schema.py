"""The database schema as numbered migrations, applied in order, each in the transaction recording it.

Append new migrations; never edit one that has shipped.
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[tuple[int, str, str], ...]] = (
    (
        1,
        "events, state tables, quarantine, agent state",
        """
        -- History kinds (activity, event, job, error, crash), appended.
        -- De-duplication rides on (ts, event_id): time-ordered, so inserts stay at the right
        -- edge of the B-tree instead of landing at random like a UNIQUE index on a UUID alone.
        CREATE TABLE events (
            id          INTEGER PRIMARY KEY,
            event_id    TEXT NOT NULL,
            app         TEXT NOT NULL,
            kind        TEXT NOT NULL,
            ts          TEXT NOT NULL,      -- event time, RFC 3339 UTC, millisecond precision
            payload     TEXT NOT NULL,      -- the event's JSON object as received
            received_at TEXT NOT NULL       -- when the agent received the stanza
        );
        CREATE UNIQUE INDEX events_ts_event_id ON events (ts, event_id);

        -- One REST API call by an app's back end, with its HTTP status.
        CREATE TABLE api_calls (
            id          INTEGER PRIMARY KEY,
            event_id    TEXT NOT NULL,
            app         TEXT NOT NULL,
            ts          TEXT NOT NULL,
            api         TEXT NOT NULL,
            method      TEXT,
            path        TEXT,
            status      INTEGER NOT NULL,
            request_id  TEXT,
            latency_ms  INTEGER,
            detail      TEXT,
            payload     TEXT NOT NULL,
            received_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX api_calls_ts_event_id ON api_calls (ts, event_id);

        -- State kinds: the newest value per key wins (by event time), so replays are harmless.
        CREATE TABLE devices (
            app TEXT NOT NULL, device_id TEXT NOT NULL,
            ts TEXT NOT NULL, event_id TEXT NOT NULL, payload TEXT NOT NULL, received_at TEXT NOT NULL,
            PRIMARY KEY (app, device_id)
        );
        CREATE TABLE tags (
            app TEXT NOT NULL, device_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT,
            ts TEXT NOT NULL, event_id TEXT NOT NULL, received_at TEXT NOT NULL,
            PRIMARY KEY (app, device_id, name)
        );
        CREATE TABLE tokens (
            app TEXT NOT NULL, device_id TEXT NOT NULL, token TEXT NOT NULL, valid INTEGER NOT NULL,
            ts TEXT NOT NULL, event_id TEXT NOT NULL, received_at TEXT NOT NULL,
            PRIMARY KEY (app, device_id)
        );
        CREATE TABLE push_feedback (
            app TEXT NOT NULL, device_id TEXT NOT NULL, campaign_id TEXT NOT NULL, action TEXT NOT NULL,
            ts TEXT NOT NULL, event_id TEXT NOT NULL, received_at TEXT NOT NULL,
            PRIMARY KEY (app, device_id, campaign_id)
        );

        -- Events that broke the contract, with the reason and the raw XML.
        CREATE TABLE quarantine (
            id          INTEGER PRIMARY KEY,
            reason      TEXT NOT NULL,
            raw         TEXT NOT NULL,
            sender      TEXT,
            event_id    TEXT,
            app         TEXT,
            received_at TEXT NOT NULL
        );

        -- Monotonic counters (stanzas, events, duplicates, foreign stanzas, ...).
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;

        -- The agent's own state: heartbeat, session, stream-management position, last ping.
        CREATE TABLE agent_state (
            key TEXT PRIMARY KEY, value TEXT, updated_at TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
)

SCHEMA_VERSION: Final = MIGRATIONS[-1][0]
