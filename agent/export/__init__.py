"""Exports (seed 002): ``run`` claims and runs a job; ``jobs`` writes its files to a folder, ``blobs`` uploads them
to an Azure Storage container (``azure``: the instrumented client; ``destinations``: parsing ``--dest``);
``progress`` reports; the job rows are ``agent.store.exports``."""

from agent.exceptions import ExportError
from agent.export.destinations import Container, is_url, parse_container, parse_destination, scrub
from agent.export.jobs import parse_time, run_job
from agent.export.run import run_export, spool_root
from agent.store.exports import (
    HISTORY,
    SNAPSHOTS,
    Job,
    count_rows,
    create_job,
    get_job,
    list_jobs,
    requests_of,
)

__all__ = [
    "HISTORY",
    "SNAPSHOTS",
    "Container",
    "ExportError",
    "Job",
    "count_rows",
    "create_job",
    "get_job",
    "is_url",
    "list_jobs",
    "parse_container",
    "parse_destination",
    "parse_time",
    "requests_of",
    "run_export",
    "run_job",
    "scrub",
    "spool_root",
]
