"""Export jobs (DESIGN §6, seed 002): a snapshot of a state table, or a period of history.

A job is a row in ``export_jobs`` (``agent.store.exports``) that moves ``queued -> running ->
succeeded | failed`` and ends with its row count, bytes written and error. Its output is gzip JSON
Lines (and gzip CSV on request) plus a manifest (rows, SHA-256 and size of each file) in a
destination folder. Every file is written under a hidden temporary name and renamed into place,
data first and the manifest last: a consumer that waits for the manifest never sees a partial
export. The rows are streamed in chunks, each its own short read transaction, so memory stays
constant and a long export never pins the WAL (``agent.store.exports``).
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from agent import __version__
from agent.events import utc_now
from agent.exceptions import ExportError, XmppmonError
from agent.export.files import Output, fsync_dir, write_atomically
from agent.store.exports import Job, claim_job, get_job, snapshot, update_job


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


def run_job(
    db: Path,
    job_id: int,
    busy_timeout_ms: int = 30_000,
    progress: Callable[..., None] | None = None,
) -> Job:
    """Run a queued job to ``succeeded`` or ``failed``; raise ExportError on failure."""
    job = get_job(db, job_id)
    if job.state != "queued" or not claim_job(db, busy_timeout_ms, job_id):
        raise ExportError(f"export job {job_id} is {get_job(db, job_id).state}, not queued")
    dest = Path(job.destination)
    outputs: list[Output] = []
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with snapshot(db, job) as (columns, json_columns, chunks):
            jsonl = Output(dest / f"{job.stem}.jsonl.gz", "jsonl")
            outputs.append(jsonl)
            csv_writer = None
            if "csv" in job.formats.split(","):
                csv_out = Output(dest / f"{job.stem}.csv.gz", "csv")
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
        files = [dict(out.finish(), rows=rows) for out in outputs]
        for out in outputs:
            os.replace(out.tmp, out.final)
        manifest = dest / f"{job.stem}.manifest.json"
        finished = utc_now()
        write_atomically(manifest, orjson.dumps({
            "job": job.id, "type": job.type, "data": job.data, "from": job.from_ts, "to": job.to_ts,
            "rows": rows, "columns": list(columns), "files": files, "created_at": job.created_at,
            "finished_at": finished, "xmppmon": __version__,
        }, option=orjson.OPT_INDENT_2) + b"\n")  # fmt: skip
        fsync_dir(dest)
        if progress is not None:
            progress(rows, final=True)
        total_bytes = sum(f["bytes"] for f in files)
        update_job(db, busy_timeout_ms, job_id, state="succeeded", rows=rows, bytes=total_bytes,
                   manifest=str(manifest), finished_at=finished)  # fmt: skip
    except (OSError, sqlite3.Error, XmppmonError) as exc:
        for out in outputs:
            out.discard()
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, XmppmonError) else str(exc)
        update_job(db, busy_timeout_ms, job_id, state="failed", error=message, finished_at=utc_now())
        raise ExportError(f"export job {job_id} failed: {message}") from None
    return get_job(db, job_id)
