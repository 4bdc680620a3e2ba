"""An export job to an Azure Storage container: block blobs, staged blocks, the manifest last, resumable.

The job's files are first written to a local spool (``<export dir>/.spool/job-N``, the same gzip
JSON Lines and CSV as a folder export), so what is uploaded is fixed once written: an upload
that stops (network down, token expired) is resumed with ``xmppmon export resume N``, which
asks the service for the blob's uncommitted blocks and stages only the missing ones. Block ids
carry a random tag of the spool, so blocks of another attempt's spool are never mistaken for
these. Each file becomes ``<type>/<kind>/<job id>/part-00000.jsonl.gz`` (and ``.csv.gz``) by one
Commit Block List; a blob is invisible until then, and the manifest (``manifest.json`` beside
them) is written last: a consumer that waits for it never reads a partial export. The spool is
deleted once the job succeeds.
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import orjson
from azure.core.exceptions import AzureError

from agent.config import AzureSettings
from agent.events import utc_now
from agent.exceptions import ExportError, XmppmonError
from agent.export.azure import Attempt, Blobs
from agent.export.destinations import Container
from agent.export.files import write_atomically
from agent.export.jobs import Written, fail, manifest, write_parts
from agent.export.progress import Reporter
from agent.store.exports import Job, RequestLog, get_job, update_job

PROBE = 999_999  # a block number no file reaches (50,000 blocks at most per blob): the write check
META = "spool.json"


def prefix(job: Job) -> str:
    return f"{job.type}/{job.data}/{job.id}"


def block_id(tag: str, index: int) -> str:
    """Same length for every block of a blob, as the service requires."""
    return f"{tag}-{index:06d}"


def upload_job(
    db: Path, job: Job, container: Container, settings: AzureSettings, busy_timeout_ms: int, spool_root: Path,
    progress: Reporter | None = None,
) -> Job:  # fmt: skip
    """Run a claimed job to its container: spool (or reuse the spool), stage what is missing, commit, manifest."""
    requests = RequestLog(db, busy_timeout_ms, job.id)

    def record(attempt: Attempt) -> None:
        values = {k: getattr(attempt, k) for k in RequestLog.COLUMNS}
        requests.add(**values)
        if progress is not None:
            progress.request(attempt.request_id, attempt.client_request_id)
        else:
            update_job(db, busy_timeout_ms, job.id, request_id=attempt.request_id,
                       client_request_id=attempt.client_request_id)  # fmt: skip

    blobs = Blobs(container, settings, record)
    folder = spool_root / f"job-{job.id}"
    try:
        update_job(db, busy_timeout_ms, job.id, spool=str(folder))
        meta = _reusable(folder)
        tag = meta["tag"] if meta else secrets.token_hex(4)
        names = {"jsonl": "part-00000.jsonl.gz", "csv": "part-00000.csv.gz"}
        # Before writing anything big: does the token let us write, and is the container there?
        blobs.stage(f"{prefix(job)}/{names['jsonl']}", PROBE, block_id(tag, PROBE), b"\n")
        if meta is None:
            meta = _spool(db, job, folder, names, tag, settings.block_size, progress)
        written = Written(tuple(meta["columns"]), meta["files"], meta["rows"])
        existing = blobs.read(f"{prefix(job)}/manifest.json")
        if existing is not None and orjson.loads(existing).get("created_at") != job.created_at:
            raise ExportError(
                f"{container.url}/{prefix(job)}/ already holds another export's manifest (job {job.id} of another"
                " database?): use another container"
            )
        _upload(blobs, job, written, tag, meta["block_size"], progress)
        finished = utc_now()
        blob_manifest = manifest(job, written, finished, container=container.url, prefix=prefix(job),
                                 block_size=meta["block_size"])  # fmt: skip
        blobs.put(f"{prefix(job)}/manifest.json", blob_manifest, "application/json")
        total = sum(f["bytes"] for f in written.files)
        if progress is not None:
            progress.done(written.rows, total)
        update_job(db, busy_timeout_ms, job.id, state="succeeded", rows=written.rows, bytes=total,
                   manifest=f"{container.url}/{prefix(job)}/manifest.json", finished_at=finished)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
    except (OSError, sqlite3.Error, XmppmonError, AzureError) as exc:
        raise fail(db, busy_timeout_ms, job.id, exc, container.sas.get_secret_value()) from None
    finally:
        blobs.close()
        requests.close()
    return get_job(db, job.id)


def _reusable(folder: Path) -> dict[str, Any] | None:
    """The spool's description if every file it lists is there, whole; else None (and the folder is cleared)."""
    try:
        meta: dict[str, Any] = orjson.loads((folder / META).read_bytes())
        if all(Path(f["path"]).stat().st_size == f["bytes"] for f in meta["files"]):
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _spool(db: Path, job: Job, folder: Path, names: dict[str, str], tag: str, block_size: int,
           progress: Reporter | None) -> dict[str, Any]:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    written = write_parts(db, job, folder, names, progress.rows if progress else None)
    meta = {"tag": tag, "block_size": block_size, "columns": list(written.columns), "files": written.files,
            "rows": written.rows}  # fmt: skip
    write_atomically(folder / META, orjson.dumps(meta))
    return meta


def _upload(blobs: Blobs, job: Job, written: Written, tag: str, block_size: int, progress: Reporter | None) -> None:
    total = sum(f["bytes"] for f in written.files)
    done = 0
    for entry in written.files:
        blob = f"{prefix(job)}/{entry['name'].rsplit('/', 1)[-1]}"
        present = blobs.uncommitted(blob)
        ids: list[str] = []
        with open(entry["path"], "rb") as spooled:
            while data := spooled.read(block_size):
                index = len(ids)
                ids.append(block_id(tag, index))
                if present.get(ids[-1]) != len(data):
                    blobs.stage(blob, index, ids[-1], data)
                done += len(data)
                if progress is not None:
                    progress.bytes(done, total)
        metadata = {"xmppmon_job": str(job.id), "rows": str(written.rows), "sha256": entry["sha256"]}
        size = blobs.commit(blob, ids, "application/gzip", metadata)
        if size != entry["bytes"]:
            raise ExportError(
                f"{blob} was committed with {size} bytes instead of {entry['bytes']}: run the export again"
            )
