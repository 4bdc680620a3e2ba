"""Export jobs (DESIGN §6, seed 002): a snapshot of a state table, or a period of history.

A job is a row in ``export_jobs`` that moves ``queued -> running -> succeeded | failed`` and ends
with its row count, bytes written and error. Its output is gzip JSON Lines (and gzip CSV on
request) plus a manifest (rows, SHA-256 and size of each file) in a destination folder. Every file
is written under a hidden temporary name and renamed into place, data first and the manifest
last: a consumer that waits for the manifest never sees a partial export.

The rows are read through a read-only connection inside one read transaction (WAL gives it a
consistent snapshot and never blocks the agent's writer), streamed in chunks, so memory stays
constant whatever the size. The job row itself is the one thing written: the exporting process is
a separate, short-lived ``xmppmon export`` command, so it uses a second writer connection with
``busy_timeout`` for those few single-statement updates. The agent's writer commits in
milliseconds, so the two only ever wait for each other briefly; the agent never touches the table.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from agent import __version__
from agent.events import utc_now
from agent.exceptions import StoreError, XmppmonError
from agent.store import connect_readonly

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


class ExportError(XmppmonError):
    """An export could not be created or did not complete."""


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

    @property
    def stem(self) -> str:
        return f"xmppmon-export-{self.id:06d}-{self.type}-{self.data}"

    def describe(self) -> str:
        """``state`` with a note when a running job's process is gone."""
        if self.state == "running" and self.pid and not _alive(self.pid):
            return f"running (process {self.pid} is gone: the export did not finish)"
        return self.state


def parse_time(text: str) -> str:
    """An RFC 3339 time or a date, as the store's ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ExportError(f"{text!r} is not a date or an RFC 3339 time (e.g. 2024-05-01T00:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# -- the job rows --------------------------------------------------------------------------------


def _writer(db: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    if not db.exists():
        raise StoreError(f"database {db} does not exist: has the agent run with this path?")
    # Autocommit: each job update is one short statement, its own transaction.
    return sqlite3.connect(db, timeout=busy_timeout_ms / 1000, isolation_level=None)


def _update(db: Path, busy_timeout_ms: int, job_id: int, **fields: Any) -> None:
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
    destination: Path,
    *,
    from_ts: str | None = None,
    to_ts: str | None = None,
    csv_too: bool = False,
    busy_timeout_ms: int = 30_000,
) -> int:
    """Validate the request and insert a ``queued`` job; return its id."""
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
             str(destination.resolve()), utc_now()),
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
    return [Job(**dict(row)) for row in rows]


def get_job(db: Path, job_id: int) -> Job:
    jobs = list_jobs(db, job_id)
    if not jobs:
        raise ExportError(f"no export job {job_id} in {db}")
    return jobs[0]


# -- running one ---------------------------------------------------------------------------------


class _HashingFile:
    """The raw file under gzip: counts and hashes the compressed bytes as they are written."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class _Output:
    """One gzip file, written under a temporary name in the destination until :meth:`publish`."""

    def __init__(self, final: Path, fmt: str) -> None:
        self.final, self.format = final, fmt
        self.tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        self._raw = open(self.tmp, "xb")  # noqa: SIM115 - closed by finish() or discard()
        self._hashing = _HashingFile(self._raw)
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._hashing, mtime=0, compresslevel=6)

    def finish(self) -> dict[str, Any]:
        self.gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        return {"name": self.final.name, "format": self.format, "bytes": self._hashing.size,
                "sha256": self._hashing.sha256.hexdigest()}  # fmt: skip

    def discard(self) -> None:
        for closer in (self.gz.close, self._raw.close):
            with contextlib.suppress(OSError, ValueError):
                closer()
        self.tmp.unlink(missing_ok=True)


def _query(job: Job) -> tuple[str, tuple[Any, ...], tuple[str, ...], frozenset[str]]:
    if job.type == "snapshot":
        table, columns, json_columns, order = SNAPSHOTS[job.data]
        return f"FROM {table} ORDER BY {order}", (), columns, json_columns
    if job.data == "api":
        return ("FROM api_calls WHERE ts >= ? AND ts < ? ORDER BY ts, event_id",
                (job.from_ts, job.to_ts), _API_COLUMNS, frozenset({"payload"}))  # fmt: skip
    return ("FROM events WHERE ts >= ? AND ts < ? AND kind = ? ORDER BY ts, event_id",
            (job.from_ts, job.to_ts, job.data), _EVENT_COLUMNS, frozenset({"payload"}))  # fmt: skip


def _rows(
    conn: sqlite3.Connection, job: Job
) -> tuple[tuple[str, ...], frozenset[str], Iterator[list[tuple[Any, ...]]]]:
    tail, params, columns, json_columns = _query(job)
    cursor = conn.execute(f"SELECT {', '.join(columns)} {tail}", params)

    def chunks() -> Iterator[list[tuple[Any, ...]]]:
        while rows := cursor.fetchmany(CHUNK):
            yield rows

    return columns, json_columns, chunks()


class Progress:
    """``export 3: 120000/1000000 rows (12%)`` on a terminal, redrawn at most 5 times a second."""

    def __init__(self, job_id: int, total: int | None, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.job_id, self.total = job_id, total
        self._last = 0.0

    def __call__(self, rows: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < 0.2:
            return
        self._last = now
        share = f" ({100 * rows // self.total}%)" if self.total else ""
        total = f"/{self.total}" if self.total is not None else ""
        self.stream.write(f"\rexport {self.job_id}: {rows}{total} rows{share}")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def count_rows(db: Path, job: Job) -> int:
    tail, params, _, _ = _query(job)
    conn = connect_readonly(db)
    try:
        return int(conn.execute(f"SELECT count(*) {tail.split(' ORDER BY')[0]}", params).fetchone()[0])
    finally:
        conn.close()


def run_job(
    db: Path,
    job_id: int,
    busy_timeout_ms: int = 30_000,
    progress: Callable[..., None] | None = None,
) -> Job:
    """Run a queued job to ``succeeded`` or ``failed``; raise ExportError on failure."""
    job = get_job(db, job_id)
    if job.state != "queued":
        raise ExportError(f"export job {job_id} is {job.state}, not queued")
    _update(db, busy_timeout_ms, job_id, state="running", started_at=utc_now(), pid=os.getpid())
    dest = Path(job.destination)
    outputs: list[_Output] = []
    try:
        dest.mkdir(parents=True, exist_ok=True)
        conn = connect_readonly(db)
        conn.row_factory = None  # tuples: no per-row Row objects on a million rows
        try:
            conn.execute("BEGIN")  # one read transaction: a consistent snapshot of the data
            columns, json_columns, chunks = _rows(conn, job)
            jsonl = _Output(dest / f"{job.stem}.jsonl.gz", "jsonl")
            outputs.append(jsonl)
            csv_writer = None
            if "csv" in job.formats.split(","):
                csv_out = _Output(dest / f"{job.stem}.csv.gz", "csv")
                outputs.append(csv_out)
                text = io.TextIOWrapper(csv_out.gz, encoding="utf-8", newline="")
                csv_writer = csv.writer(text)
                csv_writer.writerow(columns)
            json_at = [i for i, name in enumerate(columns) if name in json_columns]
            rows = 0
            for chunk in chunks:
                lines = []
                for row in chunk:
                    values = list(row)
                    for i in json_at:
                        if values[i] is not None:
                            values[i] = orjson.Fragment(values[i])  # already JSON text
                    lines.append(orjson.dumps(dict(zip(columns, values, strict=True))))
                jsonl.gz.write(b"\n".join(lines) + b"\n")
                if csv_writer is not None:
                    csv_writer.writerows(chunk)
                rows += len(chunk)
                if progress is not None:
                    progress(rows)
            if csv_writer is not None:
                text.flush()
                text.detach()
            conn.rollback()
        finally:
            conn.close()
        files = [dict(out.finish(), rows=rows) for out in outputs]
        for out in outputs:
            os.replace(out.tmp, out.final)
        manifest = dest / f"{job.stem}.manifest.json"
        finished = utc_now()
        _write_atomically(manifest, orjson.dumps({
            "job": job.id, "type": job.type, "data": job.data, "from": job.from_ts, "to": job.to_ts,
            "rows": rows, "columns": list(columns), "files": files, "created_at": job.created_at,
            "finished_at": finished, "xmppmon": __version__,
        }, option=orjson.OPT_INDENT_2) + b"\n")  # fmt: skip
        _fsync_dir(dest)
        if progress is not None:
            progress(rows, final=True)
        total_bytes = sum(f["bytes"] for f in files)
        _update(db, busy_timeout_ms, job_id, state="succeeded", rows=rows, bytes=total_bytes,
                manifest=str(manifest), finished_at=finished)  # fmt: skip
    except (OSError, sqlite3.Error, XmppmonError) as exc:
        for out in outputs:
            out.discard()
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, XmppmonError) else str(exc)
        _update(db, busy_timeout_ms, job_id, state="failed", error=message, finished_at=utc_now())
        raise ExportError(f"export job {job_id} failed: {message}") from None
    return get_job(db, job_id)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
