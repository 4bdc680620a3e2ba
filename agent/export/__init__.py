"""Exports (seed 002): ``jobs`` runs a job, ``files`` writes its files; the job rows are ``agent.store.exports``."""

from agent.exceptions import ExportError
from agent.export.jobs import Progress, parse_time, run_job
from agent.store.exports import HISTORY, SNAPSHOTS, Job, count_rows, create_job, get_job, list_jobs

__all__ = [
    "HISTORY",
    "SNAPSHOTS",
    "ExportError",
    "Job",
    "Progress",
    "count_rows",
    "create_job",
    "get_job",
    "list_jobs",
    "parse_time",
    "run_job",
]
