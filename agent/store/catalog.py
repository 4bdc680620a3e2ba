"""What every table and column of the database means, for ``xmppmon browse`` (Datasette's metadata).

Data, like the migrations it describes: a new migration adds its tables and columns here too
(tests/cli/test_browse.py fails naming any that lack a description).
"""

from __future__ import annotations

from typing import Final

_EVENT = {
    "event_id": "the event's id from the Monitor API (the de-duplication key, with ts)",
    "app": "the application (AppID) the event is about",
    "ts": "event time, RFC 3339 UTC with milliseconds",
    "received_at": "when the agent received the stanza, RFC 3339 UTC",
}
_STATE = {
    "app": "the application (AppID)",
    "device_id": "the device",
    "ts": "event time of the newest event for this key (older ones never overwrite it)",
    "event_id": "id of that newest event",
    "received_at": "when the agent received it",
}

#: table -> (description, {column: description})
TABLES: Final[dict[str, tuple[str, dict[str, str]]]] = {
    "events": (
        "History events (activity, event, job, error, crash), appended once each",
        {"id": "row number, in arrival order", **_EVENT, "kind": "activity, event, job, error or crash",
         "payload": "the event's JSON object as received"},
    ),
    "api_calls": (
        "REST API calls made by the apps' back ends (kind api), with their HTTP status; they feed the alerts",
        {"id": "row number, in arrival order", **_EVENT, "api": "which REST API (reach, push, analytics, ...)",
         "method": "HTTP method", "path": "request path", "status": "HTTP status code of the call",
         "request_id": "the API's request id", "latency_ms": "how long the call took, in milliseconds",
         "detail": "the API's message", "payload": "the event's JSON object as received"},
    ),
    "devices": ("Current state of each device (kind device), newest event wins",
                {**_STATE, "payload": "the device's JSON object (model, locale, timezone, ...)"}),
    "tags": ("Current value of each device tag (kind tag)",
             {**_STATE, "name": "tag name", "value": "tag value as JSON text, NULL for null"}),
    "tokens": ("Current push token of each device (kind token)",
               {**_STATE, "token": "the push token", "valid": "1 if the token is valid, 0 if not"}),
    "push_feedback": (
        "Newest feedback of each device per push campaign (kind push)",
        {**_STATE, "campaign_id": "the push campaign", "action": "received, displayed, actioned or exited"},
    ),
    "quarantine": (
        "Events that broke the Monitor API contract, kept with the reason and the raw XML",
        {"id": "row number", "reason": "why the event was refused (one line)",
         "raw": "the <event/> element as received", "sender": "JID that sent it",
         "event_id": "its id attribute, if any", "app": "its app attribute, if any",
         "received_at": "when the agent received it",
         "digest": "hash of sender and raw text: a replayed copy of the same event is not quarantined again"},
    ),
    "counters": ("Monotonic counters of the agent (stanzas, events_received, events_duplicate, events_expired, ...)",
                 {"name": "counter name", "value": "its value since the database was created"}),
    "agent_state": (
        "The agent's own state: heartbeat, session, stream position, last ping, writer backlog",
        {"key": "state name (session, heartbeat, last_ping_rtt_ms, sm_id, ...)", "value": "its value, as text",
         "updated_at": "when it was last written"},
    ),
    "alerts": (
        "One row per alert identity (source, app, code, api) and its state",
        {"id": "alert id", "source": "api, subscription, session, store or sidecar",
         "app": "the application, '' when not about one", "code": "HTTP or XEP-0086 code, or a session code",
         "api": "the REST API (or sink name for sidecar alerts), '' when not about one",
         "class": "status class (auth, billing, forbidden, client, rate, server, ...)",
         "severity": "info, warning or critical", "state": "pending, firing, resolved or inactive",
         "count": "occurrences in the current episode", "first_seen": "start of the current episode",
         "last_seen": "latest occurrence", "window_start": "start of the counting window",
         "window_count": "occurrences in the counting window", "fired_at": "when it last started firing",
         "notified_at": "when the last notification was made", "resolved_at": "when it last resolved",
         "flaps": "times it fired again soon after resolving", "detail": "the latest message"},
    ),
    "notifications": (
        "The outbox: one row per alert transition, for the sidecar to deliver",
        {"id": "notification id", "key": "idempotency key (UUID) sent to every sink", "alert_id": "the alert",
         "transition": "firing, repeat or resolved", "alert": "JSON snapshot of the alert at the transition",
         "created_at": "when the transition happened"},
    ),
    "delivery_state": (
        "Where each notification stands for each sink",
        {"sink": "sink name", "notification_id": "the notification", "state": "pending, delivered or dead",
         "attempts": "attempts so far", "next_attempt_at": "when the next attempt may run",
         "reason": "why the last attempt failed or was dead-lettered", "updated_at": "last change",
         "alert_id": "the alert the notification is about (order per alert and sink)"},
    ),
    "sink_cursor": (
        "Highest notification each sink has taken into its work",
        {"sink": "sink name", "last_id": "highest notification id taken",
         "failing": "why the sink refuses us (401/403), NULL when it does not", "updated_at": "last change"},
    ),
    "deliveries": (
        "Every delivery attempt, with the HTTP instrumentation of seed 001",
        {"id": "attempt id", "sink": "sink name", "notification_id": "the notification",
         "attempt": "attempt number for this notification and sink",
         "status": "delivered, retry, failed, dead or unauthorized", "http_status": "HTTP status of the answer",
         "request_id": "the answer's request-id", "client_request_id": "the UUID we sent as client-request-id",
         "fe_server": "X-FEServer of the answer", "be_server": "X-TargetBEServer of the answer",
         "diag_info": "X-DiagInfo of the answer", "diag_error_id": "x-ms-diagnostics error id",
         "diag_reason": "x-ms-diagnostics reason", "diag_error_type": "x-ms-diagnostics error_type",
         "error": "what went wrong", "started_at": "when the attempt started", "finished_at": "when it ended",
         "latency_ms": "how long it took, in milliseconds"},
    ),
    "export_jobs": (
        "Export jobs (xmppmon export): queued, running, succeeded or failed",
        {"id": "job id", "type": "snapshot or history", "data": "the kind exported (device ... push, activity ... api)",
         "from_ts": "history: start of the period (inclusive)", "to_ts": "history: end of the period (exclusive)",
         "formats": "jsonl or jsonl,csv", "destination": "folder the files go to",
         "state": "queued, running, succeeded or failed", "rows": "rows written", "bytes": "bytes written",
         "manifest": "path of the manifest once succeeded", "error": "why it failed",
         "pid": "process that ran it", "created_at": "when it was created", "started_at": "when it started",
         "finished_at": "when it ended", "rows_total": "rows to write", "rows_done": "rows written so far",
         "bytes_total": "bytes to upload", "bytes_done": "bytes uploaded so far",
         "spool": "local copy being uploaded to Azure Storage (kept until the job succeeds)",
         "request_id": "x-ms-request-id of the last Azure request", "client_request_id": "x-ms-client-request-id sent"},
    ),
    "export_requests": (
        "Every request an export sent to Azure Storage, with its instrumentation (seed 001)",
        {"id": "request row", "job_id": "the export job", "operation": "stage_block, commit_block_list, ...",
         "blob": "blob name in the container", "block": "block number for stage_block", "attempt": "attempt number",
         "http_status": "HTTP status of the answer", "error_code": "x-ms-error-code, or the network error's class",
         "request_id": "x-ms-request-id", "client_request_id": "x-ms-client-request-id sent",
         "started_at": "when it was sent", "latency_ms": "how long it took, in milliseconds"},
    ),
    "schema_drift": (
        "Values outside the contract's known sets, each recorded once (the events are stored as received)",
        {"kind": "push or tag", "field": "action or value", "value": "the value as received (or its shape)",
         "app": "where it was first seen", "event_id": "the first event that carried it",
         "first_seen": "when it was first seen", "last_seen": "when it was last seen", "count": "how often"},
    ),
    "state_changes": (
        "Every upsert that changed a state table (written by triggers), for forwarding to NATS JetStream",
        {"id": "change number, in commit order", "kind": "device, tag, token or push", "app": "the application",
         "event_id": "the event that made the change", "ts": "its event time", "received_at": "when it arrived",
         "state": "JSON object: the row's key and values after the change"},
    ),
    "forward_cursor": (
        "How far the sidecar's forwarder got per source (events, api_calls, state_changes, notifications)",
        {"source": "the table forwarded", "last_id": "highest row whose publish JetStream acknowledged",
         "updated_at": "last change"},
    ),
    "forward_dead": (
        "Records JetStream refused for good (too large for the server), with the reason; the rest flowed on",
        {"id": "row number", "source": "the table", "record_id": "the record's row id", "subject": "its subject",
         "bytes": "message size", "reason": "why it was refused", "message": "the JSON that could not be published",
         "created_at": "when"},
    ),
    "forward_state": (
        "The forwarder's state for xmppmon status and metrics (lag_seconds, pending, stream, error, ...)",
        {"key": "what", "value": "its value", "updated_at": "when it was written"},
    ),
    "schema_migrations": (
        "The schema migrations applied to this database",
        {"version": "migration number", "name": "what it adds", "applied_at": "when it was applied"},
    ),
}  # fmt: skip
