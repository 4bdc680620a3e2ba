"""The ``xmppmon`` command: run the agent, emulate the Monitor API, inspect the database."""

from __future__ import annotations

import argparse
import asyncio
import csv
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from agent import __version__
from agent.config import Settings, load_settings
from agent.events import epoch
from agent.exceptions import ConfigError, XmppmonError
from agent.store import connect_readonly

EXIT_CONFIG = 2


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if getattr(args, "database", None):
        settings.store.path = Path(args.database)
    return settings


def _setup_logs(settings: Settings) -> None:
    from agent.logs import secrets_of, setup_logging

    setup_logging(settings.log, secrets=secrets_of(settings))


# -- run -----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM or Ctrl-C."""
    settings = _settings(args)
    _setup_logs(settings)
    from agent.app import run_agent

    asyncio.run(run_agent(settings))
    return 0


# -- emulate -------------------------------------------------------------------------------------


def cmd_emulate(args: argparse.Namespace) -> int:
    """Run the Monitor API emulator (an XEP-0114 component) until done or Ctrl-C."""
    from agent import emulator
    from agent.config import LogSettings
    from agent.logs import setup_logging

    setup_logging(LogSettings(level=args.log_level))
    options = emulator.options_from_args(args)
    try:
        report = asyncio.run(emulator.run(options))
    except KeyboardInterrupt:
        return 130
    print(orjson.dumps(report, default=_jsonable).decode() if args.json else report)
    return 0


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    return str(obj)


# -- status --------------------------------------------------------------------------------------


def read_status(path: Path) -> dict[str, Any]:
    """What ``xmppmon status`` shows, from the database alone (the agent may be down)."""
    conn = connect_readonly(path)
    try:
        state = {row["key"]: row["value"] for row in conn.execute("SELECT key, value FROM agent_state")}
        counters = {row["name"]: row["value"] for row in conn.execute("SELECT name, value FROM counters")}
        since = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 60))
        last_minute = conn.execute(
            "SELECT (SELECT count(*) FROM events WHERE ts >= ?1) + (SELECT count(*) FROM api_calls WHERE ts >= ?1)",
            (since,),
        ).fetchone()[0]
        totals = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("events", "api_calls", "devices", "tags", "tokens", "push_feedback", "quarantine")
        }
        reasons = {
            row[0]: row[1]
            for row in conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason ORDER BY 2 DESC LIMIT 10")
        }
        backlog, firing = _sidecar_backlog(conn)
    finally:
        conn.close()
    now = time.time()
    heartbeat_age = round(now - epoch(state["heartbeat"]), 1) if state.get("heartbeat") else None
    uptime = None
    if state.get("started_at") and state.get("session") != "stopped":
        uptime = round(now - epoch(state["started_at"]))
    return {
        "database": str(path),
        "session": state.get("session"),
        "started_at": state.get("started_at"),
        "uptime_s": uptime,
        "connected_since": state.get("connected_since"),
        "last_error": state.get("last_error"),
        "last_ping_rtt_ms": _number(state.get("last_ping_rtt_ms")),
        "last_ping_at": state.get("last_ping_at"),
        "heartbeat_age_s": heartbeat_age,
        "reconnects": _number(state.get("reconnects")),
        "firing_alerts": firing,
        "undelivered_per_sink": backlog,
        "subscriptions": orjson.loads(state["subscriptions"]) if state.get("subscriptions") else {},
        "events_last_minute": last_minute,
        "rows": totals,
        "counters": counters,
        "quarantine_reasons": reasons,
        "version": state.get("version"),
        "pid": _number(state.get("pid")),
    }


def _sidecar_backlog(conn: sqlite3.Connection) -> tuple[dict[str, int] | None, int | None]:
    """Undelivered notifications per sink and firing alerts; None where the tables are absent."""
    try:
        backlog = {
            row[0]: row[1]
            for row in conn.execute(
                "SELECT c.sink, (SELECT count(*) FROM notifications n WHERE n.id > c.last_id)"
                " + (SELECT count(*) FROM delivery_state d WHERE d.sink = c.sink"
                " AND d.state = 'pending') FROM sink_cursor c ORDER BY c.sink"
            )
        }
    except sqlite3.OperationalError:  # no sidecar tables in this database
        backlog = None
    try:
        firing = conn.execute("SELECT count(*) FROM alerts WHERE state = 'firing'").fetchone()[0]
    except sqlite3.OperationalError:
        firing = None
    return backlog, firing


def _number(value: str | None) -> float | int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return float(value)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the agent's session state and counts from the database."""
    status = read_status(_settings(args).store.path)
    if args.json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
        return 0
    width = 20
    for key, value in status.items():
        if isinstance(value, dict):
            shown = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        else:
            shown = "-" if value is None else str(value)
        print(f"{key.replace('_', ' '):<{width}} {shown}")
    return 0


# -- query ---------------------------------------------------------------------------------------


#: ``xmppmon query --view NAME``: name -> (what it shows, SQL). Documented in docs/operations.md.
VIEWS: dict[str, tuple[str, str]] = {
    "events-per-minute": (
        "events per minute per kind over the last hour (api calls as kind 'api')",
        "SELECT minute, kind, count(*) AS events FROM ("
        " SELECT substr(ts, 1, 16) AS minute, kind FROM events"
        "  WHERE ts >= strftime('%Y-%m-%dT%H:%M', 'now', '-60 minutes')"
        " UNION ALL SELECT substr(ts, 1, 16), 'api' FROM api_calls"
        "  WHERE ts >= strftime('%Y-%m-%dT%H:%M', 'now', '-60 minutes'))"
        " GROUP BY minute, kind ORDER BY minute DESC, kind",
    ),
    "open-alerts": (
        "firing and pending alerts, firing first",
        "SELECT id, state, severity, source, app, code, api, count, first_seen, last_seen, detail"
        " FROM alerts WHERE state IN ('firing', 'pending')"
        " ORDER BY state = 'firing' DESC, last_seen DESC",
    ),
    "failed-deliveries": (
        "notification delivery attempts that failed, newest first",
        "SELECT id, sink, notification_id, attempt, status, http_status, error, request_id,"
        " finished_at FROM deliveries WHERE status <> 'delivered' ORDER BY id DESC",
    ),
    "exports": (
        "export jobs and their state",
        "SELECT id, type, data, from_ts, to_ts, state, rows, bytes, error, created_at, finished_at"
        " FROM export_jobs ORDER BY id DESC",
    ),
}


def cmd_query(args: argparse.Namespace) -> int:
    """Run one read-only SQL statement (or a documented --view) and print the rows."""
    if args.view:
        sql = VIEWS[args.view][1]
    elif args.sql:
        sql = args.sql
    else:
        names = "\n".join(f"  {name:<18} {about}" for name, (about, _) in VIEWS.items())
        raise XmppmonError(f"give one SQL statement or --view NAME; the views are:\n{names}")
    conn = connect_readonly(_settings(args).store.path)
    try:
        cursor = conn.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        rows = [tuple(row) for row in cursor.fetchmany(args.limit)]
    except sqlite3.Error as exc:
        if args.view and "no such table" in str(exc):
            raise XmppmonError(
                f"view {args.view} needs a table this database lacks ({exc}): the agent or the"
                " sidecar that creates it has not run with this version"
            ) from None
        raise XmppmonError(f"query failed: {exc}") from None
    finally:
        conn.close()
    _print_rows(columns, rows, args.format)
    return 0


def _print_rows(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> None:
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "json":
        for row in rows:
            sys.stdout.write(orjson.dumps(dict(zip(columns, row, strict=True))).decode() + "\n")
    else:
        cells = [[("" if v is None else str(v))[:80] for v in row] for row in rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for cell_row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(cell_row, widths, strict=True)))
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


# -- tail ----------------------------------------------------------------------------------------


def cmd_tail(args: argparse.Namespace) -> int:
    """Follow new events as the agent commits them."""
    path = _settings(args).store.path
    conn = connect_readonly(path)
    table = "api_calls" if args.api else "events"
    columns = "id, ts, app, api || ' ' || status AS kind, event_id" if args.api else "id, ts, app, kind, event_id"
    try:
        last = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0] - args.lines
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            rows = conn.execute(
                f"SELECT {columns} FROM {table} WHERE id > ? ORDER BY id LIMIT 1000",
                (last,),
            ).fetchall()
            for row in rows:
                print(f"{row['ts']}  {row['app']:<12} {row['kind']:<10} {row['event_id']}", flush=True)
                last = row["id"]
            if not rows:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()
    return 0


# -- alerts and sidecar --------------------------------------------------------------------------


def cmd_alerts(args: argparse.Namespace) -> int:
    """List firing, pending and recently resolved alerts (--all: every alert)."""
    conn = connect_readonly(_settings(args).store.path)
    since = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - args.recent * 3600))
    where = "" if args.all else ("WHERE state IN ('firing', 'pending') OR (state = 'resolved' AND resolved_at >= ?)")
    try:
        cursor = conn.execute(
            "SELECT id, state, severity, source, app, code, api, count, first_seen, last_seen,"
            f" resolved_at, detail FROM alerts {where}"
            " ORDER BY state = 'firing' DESC, last_seen DESC",
            () if args.all else (since,),
        )
        columns = [d[0] for d in cursor.description or ()]
        rows = [tuple(row) for row in cursor.fetchall()]
    except sqlite3.Error as exc:
        raise XmppmonError(f"cannot read alerts: {exc} (has the agent run since the upgrade?)") from None
    finally:
        conn.close()
    _print_rows(columns, rows, args.format)
    return 0


def cmd_sidecar(args: argparse.Namespace) -> int:
    """Relay alert notifications to the sinks of XMPPMON_SIDECAR__SINKS until SIGTERM."""
    settings = _settings(args)
    _setup_logs(settings)
    from agent.sidecar.runner import run_sidecar

    asyncio.run(run_sidecar(settings))
    return 0


# -- doctor and export ---------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check configuration, database, permissions, CA file and DNS; send nothing. Exit 1 on failure."""
    from agent.doctor import run_checks

    checks = run_checks(args.config, args.database)
    for check in checks:
        print(check.line())
    failed = sum(check.status == "FAIL" for check in checks)
    print(f"{len(checks)} checks, {failed} failed")
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Create and run an export job (snapshot or history), list jobs, or show one job."""
    from agent import export

    settings = _settings(args)
    db, busy = settings.store.path, settings.store.busy_timeout_ms
    if args.action == "list" or args.action == "status":
        jobs = export.list_jobs(db) if args.action == "list" else [export.get_job(db, _job_id(args))]
        if args.json:
            for job in jobs:
                print(orjson.dumps(dict(vars(job), state=job.describe())).decode())
            return 0
        columns = ["id", "type", "data", "from_ts", "to_ts", "state", "rows", "bytes", "error", "manifest"]
        _print_rows(
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
        import subprocess

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


# -- demo ----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Local demo: a private Prosody, the emulated Monitor API, and the agent, on 127.0.0.1."""
    from agent.demo import run_demo

    return run_demo(args)


# -- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmppmon",
        description="Keep a Monitor API session alive over XMPP and persist its events to SQLite.",
        epilog="Settings come from XMPPMON_* variables, the TOML file, and $CREDENTIALS_DIRECTORY.",
    )
    parser.add_argument("--version", action="version", version=f"xmppmon {__version__}")
    parser.add_argument("--config", metavar="PATH", help="TOML settings file (default: $XMPPMON_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=(func.__doc__ or "").strip(), description=(func.__doc__ or "").strip(), **kw)
        p.set_defaults(func=func)
        return p

    add("run", cmd_run)

    from agent import emulator

    p = add("emulate", cmd_emulate)
    emulator.add_arguments(p)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")

    for name, func in (("status", cmd_status), ("query", cmd_query), ("tail", cmd_tail)):
        p = add(name, func)
        p.add_argument("--database", metavar="PATH", help="SQLite file (default: XMPPMON_STORE__PATH)")
        if name == "status":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        elif name == "query":
            p.add_argument(
                "sql", nargs="?", help='one SQL statement, e.g. "SELECT kind, count(*) FROM events GROUP BY kind"'
            )
            p.add_argument("--view", choices=sorted(VIEWS), help="a documented view instead of SQL")
            p.add_argument("--format", choices=("table", "csv", "json"), default="table")
            p.add_argument("--csv", dest="format", action="store_const", const="csv")
            p.add_argument("--json", dest="format", action="store_const", const="json")
            p.add_argument("--limit", type=int, default=10_000, help="at most this many rows")
        else:
            p.add_argument("--api", action="store_true", help="follow api_calls instead of events")
            p.add_argument("--lines", "-n", type=int, default=10, help="start with the last N rows")
            p.add_argument("--interval", type=float, default=0.5, help="poll interval in seconds")
            p.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: never)")

    p = add("alerts", cmd_alerts)
    p.add_argument("--database", metavar="PATH", help="SQLite file (default: XMPPMON_STORE__PATH)")
    p.add_argument("--all", action="store_true", help="every alert, not only firing and recent ones")
    p.add_argument("--recent", type=float, default=24, help="show alerts resolved this many hours ago")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--json", dest="format", action="store_const", const="json")

    p = add("sidecar", cmd_sidecar)
    p.add_argument("--database", metavar="PATH", help="SQLite file (default: XMPPMON_STORE__PATH)")

    p = add("doctor", cmd_doctor)
    p.add_argument("--database", metavar="PATH", help="SQLite file (default: XMPPMON_STORE__PATH)")

    from agent.export import HISTORY, SNAPSHOTS

    p = add("export", cmd_export)
    p.add_argument("action", choices=("create", "list", "status", "run"))
    p.add_argument("id", nargs="?", type=int, help="job id (status, run)")
    p.add_argument("--database", metavar="PATH", help="SQLite file (default: XMPPMON_STORE__PATH)")
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

    p = add("demo", cmd_demo)
    p.add_argument("--duration", type=float, default=60, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--rate", type=float, default=200, help="events per second from the emulator")
    p.add_argument("--batch", type=int, default=5, help="events per stanza")
    p.add_argument("--workdir", metavar="DIR", help="keep the demo's files here (default: a temp dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"xmppmon: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except XmppmonError as exc:
        print(f"xmppmon: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
