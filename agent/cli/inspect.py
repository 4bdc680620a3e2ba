"""``xmppmon status``, ``query``, ``tail`` and ``alerts``: read the database, never write it."""

from __future__ import annotations

import argparse
import sqlite3
import time

import orjson

from agent.cli.common import Add, database_option, print_rows, settings_of
from agent.exceptions import XmppmonError
from agent.store.readers import VIEWS, Tail, list_alerts, read_status, run_query


def cmd_status(args: argparse.Namespace) -> int:
    """Print the agent's session state and counts from the database."""
    status = read_status(settings_of(args).store.path)
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


def cmd_query(args: argparse.Namespace) -> int:
    """Run one read-only SQL statement (or a documented --view) and print the rows."""
    if args.view:
        sql = VIEWS[args.view][1]
    elif args.sql:
        sql = args.sql
    else:
        names = "\n".join(f"  {name:<18} {about}" for name, (about, _) in VIEWS.items())
        raise XmppmonError(f"give one SQL statement or --view NAME; the views are:\n{names}")
    try:
        columns, rows = run_query(settings_of(args).store.path, sql, args.limit)
    except sqlite3.Error as exc:
        if args.view and "no such table" in str(exc):
            raise XmppmonError(
                f"view {args.view} needs a table this database lacks ({exc}): the agent or the"
                " sidecar that creates it has not run with this version"
            ) from None
        raise XmppmonError(f"query failed: {exc}") from None
    print_rows(columns, rows, args.format)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Follow new events as the agent commits them."""
    tail = Tail(settings_of(args).store.path, args.api)
    try:
        tail.start(args.lines)
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            rows = tail.poll()
            for row in rows:
                print(f"{row['ts']}  {row['app']:<12} {row['kind']:<10} {row['event_id']}", flush=True)
            if not rows:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """List firing, pending and recently resolved alerts (--all: every alert)."""
    try:
        columns, rows = list_alerts(settings_of(args).store.path, args.all, time.time() - args.recent * 3600)
    except sqlite3.Error as exc:
        raise XmppmonError(f"cannot read alerts: {exc} (has the agent run since the upgrade?)") from None
    print_rows(columns, rows, args.format)
    return 0


def register(add: Add) -> None:
    p = add("status", cmd_status)
    database_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("query", cmd_query)
    database_option(p)
    p.add_argument(
        "sql", nargs="?", help="one read-only SQL statement, e.g. SELECT kind, count(*) FROM events GROUP BY kind"
    )
    p.add_argument("--view", choices=sorted(VIEWS), help="a documented view instead of SQL")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--csv", dest="format", action="store_const", const="csv")
    p.add_argument("--json", dest="format", action="store_const", const="json")
    p.add_argument("--limit", type=int, default=10_000, help="at most this many rows")

    p = add("tail", cmd_tail)
    database_option(p)
    p.add_argument("--api", action="store_true", help="follow api_calls instead of events")
    p.add_argument("--lines", "-n", type=int, default=10, help="start with the last N rows")
    p.add_argument("--interval", type=float, default=0.5, help="poll interval in seconds")
    p.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: never)")

    p = add("alerts", cmd_alerts)
    database_option(p)
    p.add_argument("--all", action="store_true", help="every alert, not only firing and recent ones")
    p.add_argument("--recent", type=float, default=24, help="show alerts resolved this many hours ago")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--json", dest="format", action="store_const", const="json")
