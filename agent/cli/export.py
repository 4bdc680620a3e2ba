"""``xmppmon export``: create and run an export job, list jobs, show one."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import orjson

from agent.cli.common import Add, database_option, print_rows, settings_of
from agent.exceptions import XmppmonError


def cmd_export(args: argparse.Namespace) -> int:
    """Create and run an export job (snapshot or history), list jobs, or show one job."""
    from agent import export

    settings = settings_of(args)
    db, busy = settings.store.path, settings.store.busy_timeout_ms
    if args.action == "list" or args.action == "status":
        jobs = export.list_jobs(db) if args.action == "list" else [export.get_job(db, _job_id(args))]
        if args.json:
            for job in jobs:
                print(orjson.dumps(dict(vars(job), state=job.describe())).decode())
            return 0
        columns = ["id", "type", "data", "from_ts", "to_ts", "state", "rows", "bytes", "error", "manifest"]
        print_rows(
            columns, [tuple(getattr(j, c) if c != "state" else j.describe() for c in columns) for j in jobs], "table"
        )
        return 0
    if args.action == "run":  # what --background starts
        export.run_job(db, _job_id(args), busy)
        return 0
    if bool(args.snapshot) == bool(args.history):
        raise XmppmonError("export create needs exactly one of --snapshot NAME or --history NAME")
    dest = Path(args.dest) if args.dest else settings.export.dir or db.resolve().parent / "exports"
    job_id = export.create_job(
        db, "snapshot" if args.snapshot else "history", args.snapshot or args.history, dest,
        from_ts=export.parse_time(args.from_) if args.from_ else None,
        to_ts=export.parse_time(args.to) if args.to else None,
        csv_too=args.csv, busy_timeout_ms=busy,
    )  # fmt: skip
    print(f"export job {job_id} queued", flush=True)
    if args.background:
        command = [sys.executable, "-m", "agent", "export", "run", str(job_id), "--database", str(db)]
        if args.config:
            command[3:3] = ["--config", args.config]
        subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL)  # fmt: skip
        print(f"running in the background: xmppmon export status {job_id}")
        return 0
    progress = None
    if sys.stderr.isatty():
        job = export.get_job(db, job_id)
        progress = export.Progress(job_id, export.count_rows(db, job))
    job = export.run_job(db, job_id, busy, progress)
    print(f"export job {job_id} succeeded: {job.rows} rows, {job.bytes} bytes, manifest {job.manifest}")
    return 0


def _job_id(args: argparse.Namespace) -> int:
    if args.id is None:
        raise XmppmonError(f"export {args.action} needs a job id")
    return int(args.id)


def register(add: Add) -> None:
    from agent.store.exports import HISTORY, SNAPSHOTS

    p = add("export", cmd_export)
    p.add_argument("action", choices=("create", "list", "status", "run"))
    p.add_argument("id", nargs="?", type=int, help="job id (status, run)")
    database_option(p)
    p.add_argument("--snapshot", choices=sorted(SNAPSHOTS), help="current state of a table")
    p.add_argument("--history", choices=HISTORY, help="events of one kind over --from/--to")
    p.add_argument("--from", dest="from_", metavar="TIME", help="start (RFC 3339 or date, inclusive)")
    p.add_argument("--to", metavar="TIME", help="end (exclusive; default now)")
    p.add_argument(
        "--dest",
        metavar="DIR",
        help="destination folder (default: XMPPMON_EXPORT__DIR, else exports/ beside the database)",
    )
    p.add_argument("--csv", action="store_true", help="also write gzip CSV")
    p.add_argument("--background", action="store_true", help="return at once; poll with export status")
    p.add_argument("--json", action="store_true", help="list/status as JSON lines")
