"""``xmppmon export``: create and run an export job (folder or Azure container), list jobs, show, resume one."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import orjson

from agent.cli.common import Add, database_option, print_rows, settings_of
from agent.config import Settings
from agent.exceptions import XmppmonError

CLI_SAS_NOTE = (
    "xmppmon: note: a SAS token on the command line is visible to other local users (ps) while this command"
    " runs; prefer XMPPMON_AZURE__SAS or a credential file azure__sas"
)


def cmd_export(args: argparse.Namespace) -> int:
    """Create and run an export job (to a folder or an Azure Storage container), list jobs, show one, resume one."""
    from agent import export

    settings = settings_of(args)
    db, busy = settings.store.path, settings.store.busy_timeout_ms
    if args.action == "list":
        jobs = export.list_jobs(db)
        if args.json:
            for job in jobs:
                print(orjson.dumps(dict(vars(job), state=job.describe())).decode())
            return 0
        columns = ["id", "type", "data", "from_ts", "to_ts", "state", "rows", "bytes", "error", "manifest"]
        print_rows(
            columns, [tuple(getattr(j, c) if c != "state" else j.describe() for c in columns) for j in jobs], "table"
        )
        return 0
    if args.action == "status":
        _status(export.get_job(db, _job_id(args)), args.json)
        return 0
    bar = sys.stderr.isatty()
    if args.action in ("run", "resume"):  # run: what --background starts
        container = None
        _logs(settings, None)
        job = export.run_export(settings, _job_id(args), container=container, resume=args.action == "resume", bar=bar)
        print(f"export job {job.id} succeeded: {job.rows} rows, {job.bytes} bytes, manifest {job.manifest}")
        return 0
    if bool(args.snapshot) == bool(args.history):
        raise XmppmonError("export create needs exactly one of --snapshot NAME or --history NAME")
    text = args.dest or str(settings.export.dir or db.resolve().parent / "exports")
    dest = export.parse_destination(text, settings.azure.sas)
    container = dest if isinstance(dest, export.Container) else None
    if container is not None and "?" in text:
        print(CLI_SAS_NOTE, file=sys.stderr)
    job_id = export.create_job(
        db, "snapshot" if args.snapshot else "history", args.snapshot or args.history,
        container.url if container is not None else Path(text),
        from_ts=export.parse_time(args.from_) if args.from_ else None,
        to_ts=export.parse_time(args.to) if args.to else None,
        csv_too=args.csv, busy_timeout_ms=busy,
    )  # fmt: skip
    print(f"export job {job_id} queued", flush=True)
    if args.background:
        command = [sys.executable, "-m", "agent", "export", "run", str(job_id), "--database", str(db)]
        if args.config:
            command[3:3] = ["--config", args.config]
        env = dict(os.environ)
        if container is not None:  # the token goes by the environment, never on a command line
            env["XMPPMON_AZURE__SAS"] = container.sas.get_secret_value()
        logs = export.spool_root(settings).parent / ".logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"job-{job_id}.log", "ab") as log_file:
            subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL, stdout=log_file,
                             stderr=log_file, env=env)  # fmt: skip
        print(f"running in the background: xmppmon export status {job_id} (log: {logs / f'job-{job_id}.log'})")
        return 0
    _logs(settings, container.sas.get_secret_value() if container is not None else None)
    job = export.run_export(settings, job_id, container=container, bar=bar)
    print(f"export job {job_id} succeeded: {job.rows} rows, {job.bytes} bytes, manifest {job.manifest}")
    return 0


def _logs(settings: Settings, sas: str | None) -> None:
    from agent.logs import secrets_of, setup_logging

    setup_logging(settings.log, secrets=[*secrets_of(settings), *([sas] if sas else [])])


def _status(job: object, as_json: bool) -> None:
    from agent.store.exports import Job

    assert isinstance(job, Job)
    if as_json:
        print(orjson.dumps(dict(vars(job), state=job.describe())).decode())
        return
    rows = f"{job.rows_done if job.rows_done is not None else job.rows or 0}"
    total_rows = job.rows_total if job.rows_total is not None else job.rows
    bytes_done = job.bytes_done if job.bytes_done is not None else job.bytes or 0
    total_bytes = job.bytes_total if job.bytes_total is not None else job.bytes
    lines = {
        "job": f"{job.id} ({job.type} {job.data}{f', {job.from_ts} to {job.to_ts}' if job.from_ts else ''})",
        "state": job.describe(),
        "rows": rows + (f" of {total_rows}" if total_rows is not None else "") + " done",
        "bytes": f"{bytes_done}" + (f" of {total_bytes}" if total_bytes is not None else "")
        + (" uploaded" if job.to_container else " written"),
        "destination": job.destination,
        "manifest": job.manifest,
        "error": job.error,
        "last request": (f"x-ms-request-id {job.request_id}, x-ms-client-request-id {job.client_request_id}"
                         if job.client_request_id else None),
        "created": job.created_at,
        "finished": job.finished_at,
    }  # fmt: skip
    for name, value in lines.items():
        if value is not None:
            print(f"{name + ':':<14}{value}")


def _job_id(args: argparse.Namespace) -> int:
    if args.id is None:
        raise XmppmonError(f"export {args.action} needs a job id")
    return int(args.id)


def register(add: Add) -> None:
    from agent.store.exports import HISTORY, SNAPSHOTS

    p = add("export", cmd_export)
    p.add_argument("action", choices=("create", "list", "status", "run", "resume"))
    p.add_argument("id", nargs="?", type=int, help="job id (status, run, resume)")
    database_option(p)
    p.add_argument("--snapshot", choices=sorted(SNAPSHOTS), help="current state of a table")
    p.add_argument("--history", choices=HISTORY, help="events of one kind over --from/--to")
    p.add_argument("--from", dest="from_", metavar="TIME", help="start (RFC 3339 or date, inclusive)")
    p.add_argument("--to", metavar="TIME", help="end (exclusive; default now)")
    p.add_argument(
        "--dest",
        metavar="DIR|URL",
        help="destination folder (default: XMPPMON_EXPORT__DIR, else exports/ beside the database), or an Azure"
        " Storage container URL https://ACCOUNT.blob.core.windows.net/CONTAINER; its SAS token in the URL's query,"
        " or better in XMPPMON_AZURE__SAS or a credential file azure__sas",
    )
    p.add_argument("--csv", action="store_true", help="also write gzip CSV")
    p.add_argument("--background", action="store_true", help="return at once; poll with export status")
    p.add_argument("--json", action="store_true", help="list/status as JSON lines")
