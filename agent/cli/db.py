"""``xmppmon doctor`` and ``xmppmon db stats|backup|vacuum``: operator checks and care of the database."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson

from agent.cli.common import Add, database_option, print_rows, settings_of
from agent.exceptions import XmppmonError

MB = 1_000_000


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check configuration, database, permissions, CA file and DNS; send nothing. Exit 1 on failure."""
    from agent.doctor import run_checks

    checks = run_checks(args.config, args.database)
    for check in checks:
        print(check.line())
    failed = sum(check.status == "FAIL" for check in checks)
    print(f"{len(checks)} checks, {failed} failed")
    return 1 if failed else 0


def cmd_db(args: argparse.Namespace) -> int:
    """Database care: stats (sizes, rows, ages, WAL, free pages), backup PATH (online, atomic), vacuum."""
    from agent.store import dbadmin

    settings = settings_of(args)
    path = settings.store.path
    if args.action == "stats":
        _print_stats(dbadmin.stats(path), args.json)
    elif args.action == "backup":
        if not args.path:
            raise XmppmonError("db backup needs the backup's file name: xmppmon db backup PATH")
        done = dbadmin.backup(path, Path(args.path))
        print(f"backed up {path} to {done['path']}: {done['bytes'] / MB:.1f} MB in {done['seconds']:.1f} s")
    else:
        fresh = max(3 * settings.store.heartbeat_seconds, 30.0)
        running = None if args.force else dbadmin.agent_running(path, fresh)
        if running:
            raise XmppmonError(
                f"the agent is writing {path} ({running}): VACUUM would hold its writes back for the whole"
                " run; stop it first (systemctl stop xmppmon-agent) or pass --force"
            )
        done = dbadmin.vacuum(path, settings.store.busy_timeout_ms)
        print(
            f"vacuumed {path} in {done['seconds']:.1f} s: {done['before_bytes'] / MB:.1f} MB ->"
            f" {done['after_bytes'] / MB:.1f} MB (freed {done['freed_bytes'] / MB:.1f} MB);"
            f" auto_vacuum {done['auto_vacuum']} (was {done['auto_vacuum_was']})"
        )
    return 0


def _print_stats(stats: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode())
        return

    def mb(value: int | None) -> str:
        return "-" if value is None else f"{value / MB:.2f}"

    rows = [
        (o["name"], o["type"] if o["type"] == "table" else f"index on {o['table']}", o["rows"], mb(o["bytes"]),
         o["oldest"], o["newest"])
        for o in stats["objects"]
    ]  # fmt: skip
    print_rows(["name", "type", "rows", "MB", "oldest", "newest"], rows, "table")
    if not stats["dbstat"]:
        print("(sizes per table need SQLite's dbstat table, which this SQLite lacks)")
    print(
        f"file {mb(stats['file_bytes'])} MB, WAL {mb(stats['wal_bytes'])} MB; {stats['pages']} pages of"
        f" {stats['page_size']} bytes, {stats['freelist_pages']} free ({mb(stats['freelist_bytes'])} MB);"
        f" auto_vacuum {stats['auto_vacuum']}, journal {stats['journal_mode']}"
    )


def register(add: Add) -> None:
    database_option(add("doctor", cmd_doctor))
    p = add("db", cmd_db)
    p.add_argument("action", choices=("stats", "backup", "vacuum"))
    p.add_argument("path", nargs="?", help="backup: the file to write (replaced atomically)")
    database_option(p)
    p.add_argument("--json", action="store_true", help="stats as JSON")
    p.add_argument("--force", action="store_true", help="vacuum even though the agent is running")
