"""Export jobs in SQL: the ``export_jobs`` rows, and the consistent read of the rows an export writes.

The job row is the one thing an export writes: the exporting process is a separate, short-lived
``xmppmon export`` command, so it uses a second writer connection with ``busy_timeout`` for those
few single-statement updates. The agent's writer commits in milliseconds, so the two only ever
wait for each other briefly; the agent never touches the table. The data is read through a
read-only connection in chunks of ``CHUNK`` rows in key order, each chunk its own short read
transaction (keyset paging), so memory stays constant whatever the size and a long export never
pins the WAL. Each row is exported at most once; a row committed behind the export's position
while it runs is not in it (as with a snapshot taken at the start), one committed ahead of it is.
An export to Azure Storage also logs every request it sends (``export_requests``, seed 001's
instrumentation); it spools the same files first, so it reads the rows the same way.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from agent.events import utc_now
from agent.exceptions import ExportError, StoreError
from agent.store.connection import connect_readonly
from agent.store.paging import keyset_chunks

#: Snapshot data -> (table, columns, JSON columns, order).
SNAPSHOTS: dict[str, tuple[str, tuple[str, ...], frozenset[str], str]] = {
    "device": ("devices", ("app", "device_id", "ts", "event_id", "received_at", "payload"),
               frozenset({"payload"}), "app, device_id"),
    "tag": ("tags", ("app", "device_id", "name", "value", "ts", "event_id", "received_at"),
            frozenset({"value"}), "app, device_id, name"),
    "token": ("tokens", ("app", "device_id", "token", "valid", "ts", "event_id", "received_at"),
              frozenset(), "app, device_id"),
    "push": ("push_feedback",
             ("app", "device_id", "campaign_id", "action", "ts", "event_id", "received_at"),
             frozenset(), "app, device_id, campaign_id"),
}  # fmt: skip
HISTORY = ("activity", "event", "job", "error", "crash", "api")
_EVENT_COLUMNS = ("event_id", "app", "kind", "ts", "received_at", "payload")
_API_COLUMNS = ("event_id", "app", "ts", "api", "method", "path", "status", "request_id",
                "latency_ms", "detail", "received_at", "payload")  # fmt: skip
CHUNK = 2000


@dataclass
class Job:
    id: int
    type: str
    data: str
    from_ts: str | None
    to_ts: str | None
    formats: str
    destination: str
    state: str
    rows: int | None = None
    bytes: int | None = None
    manifest: str | None = None
    error: str | None = None
    pid: int | None = None
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    rows_total: int | None = None
    rows_done: int | None = None
    bytes_total: int | None = None
    bytes_done: int | None = None
    spool: str | None = None
    request_id: str | None = None
    client_request_id: str | None = None

    @classmethod
    def of(cls, row: sqlite3.Row) -> Job:
        """From a row; columns another version added are ignored, so old and new code read one table."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: row[k] for k in row.keys() if k in known})  # noqa: SIM118 - a Row iterates values

    @property
    def to_container(self) -> bool:
        """True when the destination is an Azure Storage container URL (stored without its SAS)."""
        return self.destination.startswith(("https://", "http://"))

    @property
    def stem(self) -> str:
        return f"xmppmon-export-{self.id:06d}-{self.type}-{self.data}"

    def describe(self) -> str:
        """``state`` with a note when a running job's process is gone."""
        if self.state == "running" and self.pid and not _alive(self.pid):
            return f"running (process {self.pid} is gone: the export did not finish)"
        return self.state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer(db: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    if not db.exists():
        raise StoreError(f"database {db} does not exist: has the agent run with this path?")
    # Autocommit: each job update is one short statement, its own transaction.
    return sqlite3.connect(db, timeout=busy_timeout_ms / 1000, isolation_level=None)


def update_job(db: Path, busy_timeout_ms: int, job_id: int, **fields: Any) -> None:
    conn = _writer(db, busy_timeout_ms)
    try:
        names = ", ".join(f"{name} = ?" for name in fields)
        conn.execute(f"UPDATE export_jobs SET {names} WHERE id = ?", (*fields.values(), job_id))
    finally:
        conn.close()


def create_job(
    db: Path,
    type_: str,
    data: str,
    destination: Path | str,
    *,
    from_ts: str | None = None,
    to_ts: str | None = None,
    csv_too: bool = False,
    busy_timeout_ms: int = 30_000,
) -> int:
    """Validate the request and insert a ``queued`` job; return its id.

    ``destination`` is a folder, or a container URL as a string, already stripped of its SAS token.
    """
    if type_ == "snapshot" and data not in SNAPSHOTS:
        raise ExportError(f"unknown snapshot {data!r}: choose one of {', '.join(SNAPSHOTS)}")
    if type_ == "history":
        if data not in HISTORY:
            raise ExportError(f"unknown history {data!r}: choose one of {', '.join(HISTORY)}")
        if from_ts is None:
            raise ExportError("a history export needs --from (and optionally --to, default now)")
        to_ts = to_ts or utc_now()
        if to_ts <= from_ts:
            raise ExportError(f"--to ({to_ts}) must be after --from ({from_ts})")
    elif from_ts or to_ts:
        raise ExportError("--from/--to apply to history exports only: a snapshot is the current state")
    conn = _writer(db, busy_timeout_ms)
    try:
        cursor = conn.execute(
            "INSERT INTO export_jobs (type, data, from_ts, to_ts, formats, destination, state,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
            (type_, data, from_ts, to_ts, "jsonl,csv" if csv_too else "jsonl",
             destination if isinstance(destination, str) else str(destination.resolve()), utc_now()),
        )  # fmt: skip
        return int(cursor.lastrowid or 0)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise ExportError(
                f"database {db} has no export_jobs table: start the agent once with this version"
                " (it applies the migrations)"
            ) from None
        raise ExportError(f"cannot create the export job in {db}: {exc}") from None
    finally:
        conn.close()


def list_jobs(db: Path, job_id: int | None = None) -> list[Job]:
    conn = connect_readonly(db)
    try:
        where, params = ("WHERE id = ?", (job_id,)) if job_id is not None else ("", ())
        rows = conn.execute(f"SELECT * FROM export_jobs {where} ORDER BY id", params).fetchall()
    except sqlite3.OperationalError as exc:
        raise ExportError(f"cannot read export jobs from {db}: {exc}") from None
    finally:
        conn.close()
    return [Job.of(row) for row in rows]


def get_job(db: Path, job_id: int) -> Job:
    jobs = list_jobs(db, job_id)
    if not jobs:
        raise ExportError(f"no export job {job_id} in {db}")
    return jobs[0]


def claim_job(db: Path, busy_timeout_ms: int, job_id: int) -> bool:
    """Move a ``queued`` job to ``running`` for this process; False if another process took it first.

    One conditional UPDATE: two ``export run`` processes started for the same job cannot both win.
    """
    conn = _writer(db, busy_timeout_ms)
    try:
        cursor = conn.execute(
            "UPDATE export_jobs SET state = 'running', started_at = ?, pid = ? WHERE id = ? AND state = 'queued'",
            (utc_now(), os.getpid(), job_id),
        )
        return cursor.rowcount == 1
    finally:
        conn.close()


def reclaim_job(db: Path, busy_timeout_ms: int, job: Job) -> bool:
    """Move a failed job (or one left running by a dead process) back to ``running`` for this process.

    Compare-and-set on the state and pid read before: two resumes cannot both win.
    """
    conn = _writer(db, busy_timeout_ms)
    try:
        cursor = conn.execute(
            "UPDATE export_jobs SET state = 'running', pid = ?, error = NULL, finished_at = NULL"
            " WHERE id = ? AND state = ? AND pid IS ?",
            (os.getpid(), job.id, job.state, job.pid),
        )
        return cursor.rowcount == 1
    finally:
        conn.close()


class RequestLog:
    """Appends the rows of ``export_requests`` for one job, each insert its own short transaction."""

    COLUMNS = ("operation", "blob", "block", "attempt", "http_status", "error_code", "request_id",
               "client_request_id", "started_at", "latency_ms")  # fmt: skip

    def __init__(self, db: Path, busy_timeout_ms: int, job_id: int) -> None:
        self.job_id = job_id
        self._conn = _writer(db, busy_timeout_ms)

    def add(self, **values: Any) -> None:
        names = ", ".join(self.COLUMNS)
        self._conn.execute(
            f"INSERT INTO export_requests (job_id, {names}) VALUES (?{', ?' * len(self.COLUMNS)})",
            (self.job_id, *(values.get(name) for name in self.COLUMNS)),
        )

    def close(self) -> None:
        self._conn.close()


def requests_of(db: Path, job_id: int) -> list[dict[str, Any]]:
    """The requests a job sent, in order."""
    conn = connect_readonly(db)
    try:
        rows = conn.execute("SELECT * FROM export_requests WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
    finally:
        conn.close()
    return [dict(row) for row in rows]


def _query(job: Job) -> tuple[str, tuple[Any, ...], tuple[str, ...], frozenset[str]]:
    if job.type == "snapshot":
        table, columns, json_columns, order = SNAPSHOTS[job.data]
        return f"FROM {table} ORDER BY {order}", (), columns, json_columns
    if job.data == "api":
        return ("FROM api_calls WHERE ts >= ? AND ts < ? ORDER BY ts, event_id",
                (job.from_ts, job.to_ts), _API_COLUMNS, frozenset({"payload"}))  # fmt: skip
    return ("FROM events WHERE ts >= ? AND ts < ? AND kind = ? ORDER BY ts, event_id",
            (job.from_ts, job.to_ts, job.data), _EVENT_COLUMNS, frozenset({"payload"}))  # fmt: skip


def _chunks(conn: sqlite3.Connection, job: Job, columns: tuple[str, ...]) -> Iterator[list[tuple[Any, ...]]]:
    """The job's rows in key order, ``CHUNK`` at a time, each chunk its own short read (agent.store.paging)."""
    if job.type == "snapshot":
        table, _, _, order = SNAPSHOTS[job.data]
        return keyset_chunks(conn, table, columns, tuple(k.strip() for k in order.split(",")), CHUNK)
    table = "api_calls" if job.data == "api" else "events"
    where = "ts >= ? AND ts < ?" + ("" if job.data == "api" else " AND kind = ?")
    params = (job.from_ts, job.to_ts) + (() if job.data == "api" else (job.data,))
    return keyset_chunks(conn, table, columns, ("ts", "event_id"), CHUNK, where, params, first_key_from=True)


def count_rows(db: Path, job: Job) -> int:
    tail, params, _, _ = _query(job)
    conn = connect_readonly(db)
    try:
        return int(conn.execute(f"SELECT count(*) {tail.split(' ORDER BY')[0]}", params).fetchone()[0])
    finally:
        conn.close()


@contextmanager
def snapshot(db: Path, job: Job) -> Iterator[tuple[tuple[str, ...], frozenset[str], Iterator[list[tuple[Any, ...]]]]]:
    """The job's columns, its JSON columns, and its rows in chunks, each chunk from its own short read."""
    _, _, columns, json_columns = _query(job)
    conn = connect_readonly(db)
    conn.row_factory = None  # tuples: no per-row Row objects on a million rows
    try:
        yield columns, json_columns, _chunks(conn, job, columns)
    finally:
        conn.close()
