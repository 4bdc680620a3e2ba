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
    (
        2,
        "alerts, notification outbox, sidecar deliveries",
        """
        -- One row per alert identity (source, app, code, api); its state moves
        -- inactive/resolved -> pending -> firing -> resolved. Times are RFC 3339 UTC.
        CREATE TABLE alerts (
            id            INTEGER PRIMARY KEY,
            source        TEXT NOT NULL,   -- api, subscription, session, sidecar
            app           TEXT NOT NULL,   -- '' when not about one application
            code          TEXT NOT NULL,   -- HTTP/XEP-0086 code, a session code, or a class
            api           TEXT NOT NULL,   -- '' when not about one REST API
            class         TEXT NOT NULL,
            severity      TEXT NOT NULL,
            state         TEXT NOT NULL,   -- pending, firing, resolved, inactive
            count         INTEGER NOT NULL,-- occurrences in the current episode
            first_seen    TEXT NOT NULL,   -- start of the current episode
            last_seen     TEXT NOT NULL,
            window_start  TEXT NOT NULL,
            window_count  INTEGER NOT NULL,
            fired_at      TEXT,
            notified_at   TEXT,
            resolved_at   TEXT,
            flaps         INTEGER NOT NULL DEFAULT 0,
            detail        TEXT,
            UNIQUE (source, app, code, api)
        );
        CREATE INDEX alerts_state ON alerts (state, last_seen);

        -- The outbox: one row per transition, written in the transaction of the alert change.
        CREATE TABLE notifications (
            id          INTEGER PRIMARY KEY,
            key         TEXT NOT NULL UNIQUE,  -- idempotency key (UUID) sent to every sink
            alert_id    INTEGER NOT NULL REFERENCES alerts (id),
            transition  TEXT NOT NULL,         -- firing, repeat, resolved
            alert       TEXT NOT NULL,         -- JSON snapshot of the alert at the transition
            created_at  TEXT NOT NULL
        );

        -- The sidecar's progress: one row per (sink, notification) it has seen.
        CREATE TABLE delivery_state (
            sink            TEXT NOT NULL,
            notification_id INTEGER NOT NULL REFERENCES notifications (id),
            state           TEXT NOT NULL,   -- pending, delivered, dead
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            reason          TEXT,
            updated_at      TEXT NOT NULL,
            PRIMARY KEY (sink, notification_id)
        ) WITHOUT ROWID;
        CREATE INDEX delivery_state_pending ON delivery_state (sink, state, next_attempt_at);

        -- Highest notification id each sink has taken into delivery_state.
        CREATE TABLE sink_cursor (
            sink TEXT PRIMARY KEY, last_id INTEGER NOT NULL, failing TEXT, updated_at TEXT NOT NULL
        ) WITHOUT ROWID;

        -- Every delivery attempt, with the HTTP instrumentation of seed 001.
        CREATE TABLE deliveries (
            id                INTEGER PRIMARY KEY,
            sink              TEXT NOT NULL,
            notification_id   INTEGER NOT NULL REFERENCES notifications (id),
            attempt           INTEGER NOT NULL,
            status            TEXT NOT NULL,  -- delivered, retry, failed, dead, unauthorized
            http_status       INTEGER,
            request_id        TEXT,
            client_request_id TEXT,
            fe_server         TEXT,
            be_server         TEXT,
            diag_info         TEXT,
            diag_error_id     INTEGER,
            diag_reason       TEXT,
            diag_error_type   TEXT,
            error             TEXT,
            started_at        TEXT NOT NULL,
            finished_at       TEXT NOT NULL,
            latency_ms        REAL
        );
        CREATE INDEX deliveries_notification ON deliveries (notification_id, sink);
        """,
    ),
    (
        3,
        "export jobs",
        """
        -- One row per export (DESIGN §6): queued -> running -> succeeded | failed.
        -- Written by the short-lived `xmppmon export` process, not the agent's writer.
        CREATE TABLE export_jobs (
            id          INTEGER PRIMARY KEY,
            type        TEXT NOT NULL,      -- snapshot, history
            data        TEXT NOT NULL,      -- device, tag, token, push | activity ... crash, api
            from_ts     TEXT,               -- history only: [from_ts, to_ts), RFC 3339 UTC
            to_ts       TEXT,
            formats     TEXT NOT NULL,      -- "jsonl" or "jsonl,csv"
            destination TEXT NOT NULL,      -- folder the files and the manifest go to
            state       TEXT NOT NULL,      -- queued, running, succeeded, failed
            rows        INTEGER,
            bytes       INTEGER,
            manifest    TEXT,               -- path of the manifest once succeeded
            error       TEXT,
            pid         INTEGER,
            created_at  TEXT NOT NULL,
            started_at  TEXT,
            finished_at TEXT
        );
        CREATE INDEX export_jobs_state ON export_jobs (state, id);
        """,
    ),
    (
        4,
        "quarantine de-duplication",
        """
        -- A replayed malformed event (offline, archive and resumption deliveries overlap by design)
        -- is quarantined once: the digest of its sender and raw text is unique. Rows from before
        -- this migration keep a digest of their own, so none of them is merged or lost.
        -- AUTOINCREMENT: a row replayed out of quarantine (xmppmon quarantine replay) leaves its id
        -- unused, so `quarantine show ID` never shows another event later.
        CREATE TABLE quarantine_v4 (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            reason      TEXT NOT NULL,
            raw         TEXT NOT NULL,
            sender      TEXT,
            event_id    TEXT,
            app         TEXT,
            received_at TEXT NOT NULL,
            digest      TEXT NOT NULL UNIQUE
        );
        INSERT INTO quarantine_v4 (id, reason, raw, sender, event_id, app, received_at, digest)
            SELECT id, reason, raw, sender, event_id, app, received_at, 'legacy:' || id FROM quarantine;
        DROP TABLE quarantine;
        ALTER TABLE quarantine_v4 RENAME TO quarantine;
        """,
    ),
    (
        5,
        "delivery order per alert: delivery_state.alert_id, indexes",
        """
        -- Per sink and alert, the sidecar sends the oldest pending notification first and marks
        -- 'superseded' what a later one replaces (agent/store/sequencing.py): both look up a sink's
        -- pending notifications of one alert, so the alert is kept beside them and indexed.
        ALTER TABLE delivery_state ADD COLUMN alert_id INTEGER;
        UPDATE delivery_state SET alert_id = (SELECT alert_id FROM notifications WHERE id = notification_id);
        CREATE INDEX IF NOT EXISTS delivery_state_alert ON delivery_state (sink, state, alert_id, notification_id);
        CREATE INDEX IF NOT EXISTS delivery_state_order ON delivery_state (sink, state, notification_id);
        -- The latest notification of each firing alert (a new sink's start, Alertmanager re-posts).
        CREATE INDEX IF NOT EXISTS notifications_alert ON notifications (alert_id, id);
        """,
    ),
    (
        6,
        "exports to Azure Storage (progress, request log), schema drift",
        """
        -- Progress while a job runs, polled by `xmppmon export status`.
        ALTER TABLE export_jobs ADD COLUMN rows_total INTEGER;
        ALTER TABLE export_jobs ADD COLUMN rows_done INTEGER;
        ALTER TABLE export_jobs ADD COLUMN bytes_total INTEGER;
        ALTER TABLE export_jobs ADD COLUMN bytes_done INTEGER;
        -- Azure destinations: the local copy being uploaded (kept until the job succeeds, so
        -- `export resume` re-stages only missing blocks), and the last request's ids (seed 001).
        ALTER TABLE export_jobs ADD COLUMN spool TEXT;
        ALTER TABLE export_jobs ADD COLUMN request_id TEXT;         -- x-ms-request-id received
        ALTER TABLE export_jobs ADD COLUMN client_request_id TEXT;  -- x-ms-client-request-id sent

        -- Every request an export sent to Azure Storage, with its instrumentation (seed 001).
        CREATE TABLE export_requests (
            id                INTEGER PRIMARY KEY,
            job_id            INTEGER NOT NULL REFERENCES export_jobs (id),
            operation         TEXT NOT NULL,   -- stage_block, commit_block_list, upload_manifest, ...
            blob              TEXT,            -- blob name, relative to the container
            block             INTEGER,         -- block number for stage_block
            attempt           INTEGER NOT NULL,
            http_status       INTEGER,
            error_code        TEXT,            -- x-ms-error-code, or the network error's class
            request_id        TEXT,            -- x-ms-request-id
            client_request_id TEXT NOT NULL,   -- x-ms-client-request-id sent
            started_at        TEXT NOT NULL,
            latency_ms        REAL
        );
        CREATE INDEX export_requests_job ON export_requests (job_id, id);

        -- Values outside the contract's known sets (a push action, a tag value's shape), each
        -- recorded once: the event itself is stored as received. One alert per new value.
        CREATE TABLE schema_drift (
            kind       TEXT NOT NULL,   -- push, tag
            field      TEXT NOT NULL,   -- action, value
            value      TEXT NOT NULL,   -- as received (a shape such as 'object' for tag values)
            app        TEXT NOT NULL,   -- where it was first seen
            event_id   TEXT NOT NULL,
            first_seen TEXT NOT NULL,
            last_seen  TEXT NOT NULL,
            count      INTEGER NOT NULL,
            PRIMARY KEY (kind, field, value)
        ) WITHOUT ROWID;
        """,
    ),
    (
        7,
        "forwarding to NATS JetStream: state changes, cursor, dead letters, status",
        """
        -- What the sidecar forwards (docs/scale.md): events, api_calls and notifications by their
        -- rowid (append-only, in commit order); state changes from this table, written by the
        -- triggers below in the transaction of the upsert, because a state table keeps only the
        -- newest value. AUTOINCREMENT: an id is never reused, even after pruning.
        CREATE TABLE state_changes (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            kind        TEXT NOT NULL,      -- device, tag, token, push
            app         TEXT NOT NULL,
            event_id    TEXT NOT NULL,      -- the event that made the change
            ts          TEXT NOT NULL,
            received_at TEXT NOT NULL,
            state       TEXT NOT NULL       -- JSON object: the row's key and values after the change
        );
        CREATE TRIGGER devices_changed AFTER INSERT ON devices BEGIN
            INSERT INTO state_changes (kind, app, event_id, ts, received_at, state) VALUES ('device',
                new.app, new.event_id, new.ts, new.received_at,
                json_object('device_id', new.device_id, 'payload', json(new.payload)));
        END;
        CREATE TRIGGER devices_updated AFTER UPDATE ON devices BEGIN
            INSERT INTO state_changes (kind, app, event_id, ts, received_at, state) VALUES ('device',
                new.app, new.event_id, new.ts, new.received_at,
                json_object('device_id', new.device_id, 'payload', json(new.payload)));
        END;
        CREATE TRIGGER tags_changed AFTER INSERT ON tags BEGIN
            INSERT INTO state_changes (kind, app, event_id, ts, received_at, state) VALUES ('tag',
                new.app, new.event_id, new.ts, new.received_at,
                json_object('device_id', new.device_id, 'name', new.name, 'value', json(new.value)));
        END;
        CREATE TRIGGER tags_updated AFTER UPDATE ON tags BEGIN
            INSERT INTO state_changes (kind, app, event_id, ts, received_at, state) VALUES ('tag',
                new.app, new.event_id, new.ts, new.received_at,
                json_object('device_id', new.device_id, 'name', new.name, 'value', json(new.value)));
        END;
        CREATE TRIGGER tokens_changed AFTER INSERT ON tokens BEGIN
            INSERT INTO state_changes (kind, app, event_id, ts, received_at, state) VALUES ('token',
                new.app, new.event_id, new.ts, new.received_at,
                json_object('device_id', new.device_id, 'token', new.token,
                            'valid', json(CASE WHEN new.valid THEN 'true' ELSE 'false' END)));
        END;
        CREATE TRIGGER tokens_updated AFTER UPDATE ON tokens BEGIN
            INSERT INTO state_changes (kind, app, event_id, ts, received_at, state) VALUES ('token',
                new.app, new.event_id, new.ts, new.received_at,
                json_object('device_id', new.device_id, 'token', new.token,
                            'valid', json(CASE WHEN new.valid THEN 'true' ELSE 'false' END)));
        END;
        CREATE TRIGGER push_changed AFTER INSERT ON push_feedback BEGIN
            INSERT INTO state_changes (kind, app, event_id, ts, received_at, state) VALUES ('push',
                new.app, new.event_id, new.ts, new.received_at,
                json_object('device_id', new.device_id, 'campaign_id', new.campaign_id, 'action', new.action));
        END;
        CREATE TRIGGER push_updated AFTER UPDATE ON push_feedback BEGIN
            INSERT INTO state_changes (kind, app, event_id, ts, received_at, state) VALUES ('push',
                new.app, new.event_id, new.ts, new.received_at,
                json_object('device_id', new.device_id, 'campaign_id', new.campaign_id, 'action', new.action));
        END;

        -- The highest id of each source whose publish JetStream acknowledged (events, api_calls,
        -- state_changes, notifications). Retention keeps every row above it (agent.store.changes).
        CREATE TABLE forward_cursor (
            source TEXT PRIMARY KEY, last_id INTEGER NOT NULL, updated_at TEXT NOT NULL
        ) WITHOUT ROWID;

        -- Records the cluster can never take (over its max_payload), with the reason and the message.
        CREATE TABLE forward_dead (
            id         INTEGER PRIMARY KEY,
            source     TEXT NOT NULL,
            record_id  INTEGER NOT NULL,
            subject    TEXT NOT NULL,
            bytes      INTEGER NOT NULL,
            reason     TEXT NOT NULL,
            message    TEXT NOT NULL,      -- the JSON that could not be published
            created_at TEXT NOT NULL,
            UNIQUE (source, record_id)
        );

        -- The forwarder's state for `xmppmon status` and metrics: lag_seconds, pending, stream, ...
        CREATE TABLE forward_state (
            key TEXT PRIMARY KEY, value TEXT, updated_at TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
)

SCHEMA_VERSION: Final = MIGRATIONS[-1][0]
