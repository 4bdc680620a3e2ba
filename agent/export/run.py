"""Running and resuming an export job, to a folder (``jobs``) or an Azure Storage container (``blobs``)."""

from __future__ import annotations

from pathlib import Path

from agent.config import Settings
from agent.exceptions import ExportError
from agent.export.blobs import upload_job
from agent.export.destinations import Container, parse_container
from agent.export.jobs import write_folder
from agent.export.progress import Reporter
from agent.store.exports import Job, claim_job, count_rows, get_job, reclaim_job


def spool_root(settings: Settings) -> Path:
    """Where uploads are staged locally: ``.spool`` in the export folder."""
    return (settings.export.dir or settings.store.path.resolve().parent / "exports") / ".spool"


def run_export(
    settings: Settings, job_id: int, *, container: Container | None = None, resume: bool = False, bar: bool = False
) -> Job:
    """Claim the job (queued, or failed/abandoned when resuming), run it to its destination, return it finished.

    ``container`` carries the SAS token when the caller has it from the command line; otherwise it
    comes from ``azure.sas`` (environment or credential file) with the job's stored URL.
    """
    db, busy = settings.store.path, settings.store.busy_timeout_ms
    job = get_job(db, job_id)
    if job.to_container and container is None:
        container = parse_container(job.destination, settings.azure.sas)
    if resume and job.state != "queued":
        if job.state == "succeeded":
            raise ExportError(f"export job {job_id} already succeeded: nothing to resume")
        if job.state == "running" and job.describe() == "running":
            raise ExportError(f"export job {job_id} is still running in process {job.pid}")
        if not reclaim_job(db, busy, job):
            raise ExportError(f"export job {job_id} was taken by another process meanwhile")
    elif job.state != "queued" or not claim_job(db, busy, job_id):
        raise ExportError(f"export job {job_id} is {get_job(db, job_id).state}, not queued")
    job = get_job(db, job_id)
    with Reporter(db, busy, job_id, count_rows(db, job), bar) as progress:
        if container is not None:
            return upload_job(db, job, container, settings.azure, busy, spool_root(settings), progress)
        return write_folder(db, job, busy, progress)
