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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from agent import __version__
from agent.events import utc_now
from agent.exceptions import ExportError, XmppmonError
from agent.export.destinations import scrub
from agent.export.files import Output, fsync_dir, write_atomically
from agent.export.progress import Reporter
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


@dataclass
class Written:
    """What :func:`write_parts` wrote: the columns, one entry per file (with its path), the row count."""

    columns: tuple[str, ...]
    files: list[dict[str, Any]]
    rows: int


def write_parts(
    db: Path, job: Job, folder: Path, names: dict[str, str], on_rows: Callable[[int], None] | None = None
) -> Written:
    """Write the job's rows into ``folder`` as gzip JSON Lines (``names["jsonl"]``) and CSV (``names["csv"]``).

    Each file is written under a temporary name and renamed once complete; on error nothing is left.
    """
    outputs: list[Output] = []
    try:
        with snapshot(db, job) as (columns, json_columns, chunks):
            jsonl = Output(folder / names["jsonl"], "jsonl")
            outputs.append(jsonl)
            csv_writer = None
            if "csv" in job.formats.split(","):
                csv_out = Output(folder / names["csv"], "csv")
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
                if on_rows is not None:
                    on_rows(rows)
            if csv_writer is not None:
                text.flush()
                text.detach()
        files = [dict(out.finish(), rows=rows, path=str(out.final)) for out in outputs]
        for out in outputs:
            os.replace(out.tmp, out.final)
    except BaseException:
        for out in outputs:
            out.discard()
        raise
    return Written(tuple(columns), files, rows)


def manifest(job: Job, written: Written, finished: str, **extra: Any) -> bytes:
    """The manifest: the job, its rows and columns, and each file's name, size and SHA-256."""
    files = [{k: v for k, v in f.items() if k != "path"} for f in written.files]
    return orjson.dumps({
        "job": job.id, "type": job.type, "data": job.data, "from": job.from_ts, "to": job.to_ts,
        "rows": written.rows, "columns": list(written.columns), "files": files, **extra,
        "created_at": job.created_at, "finished_at": finished, "xmppmon": __version__,
    }, option=orjson.OPT_INDENT_2) + b"\n"  # fmt: skip


def fail(db: Path, busy_timeout_ms: int, job_id: int, exc: BaseException, *secrets: str) -> ExportError:
    """Mark the job failed with one line naming the cause (scrubbed of secrets); the error to raise."""
    message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, XmppmonError) else str(exc)
    message = scrub(" ".join(message.split()), *secrets)
    update_job(db, busy_timeout_ms, job_id, state="failed", error=message, finished_at=utc_now())
    return ExportError(f"export job {job_id} failed: {message}")


def run_job(
    db: Path,
    job_id: int,
    busy_timeout_ms: int = 30_000,
    progress: Reporter | None = None,
) -> Job:
    """Run a queued job to a local folder to ``succeeded`` or ``failed``; raise ExportError on failure."""
    job = get_job(db, job_id)
    if job.state != "queued" or not claim_job(db, busy_timeout_ms, job_id):
        raise ExportError(f"export job {job_id} is {get_job(db, job_id).state}, not queued")
    return write_folder(db, job, busy_timeout_ms, progress)


def write_folder(db: Path, job: Job, busy_timeout_ms: int, progress: Reporter | None = None) -> Job:
    """Write a claimed job's files and manifest into its folder, the manifest last."""
    dest = Path(job.destination)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        written = write_parts(db, job, dest, {"jsonl": f"{job.stem}.jsonl.gz", "csv": f"{job.stem}.csv.gz"},
                              progress.rows if progress else None)  # fmt: skip
        finished = utc_now()
        path = dest / f"{job.stem}.manifest.json"
        write_atomically(path, manifest(job, written, finished))
        fsync_dir(dest)
        total_bytes = sum(f["bytes"] for f in written.files)
        if progress is not None:
            progress.done(written.rows, total_bytes)
        update_job(db, busy_timeout_ms, job.id, state="succeeded", rows=written.rows, bytes=total_bytes,
                   rows_done=written.rows, bytes_done=total_bytes, bytes_total=total_bytes,
                   manifest=str(path), finished_at=finished)  # fmt: skip
    except (OSError, sqlite3.Error, XmppmonError) as exc:
        raise fail(db, busy_timeout_ms, job.id, exc) from None
    return get_job(db, job.id)
