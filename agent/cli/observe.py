"""``xmppmon top`` (a live view of the database) and ``xmppmon browse`` (Datasette over it, read-only)."""

from __future__ import annotations

import argparse

from agent.cli.common import Add, database_option, settings_of


def cmd_top(args: argparse.Namespace) -> int:
    """Live view: events/s per kind, session, backlog, quarantine, firing alerts, sinks (q to quit)."""
    from agent.cli.top import run_top

    settings = settings_of(args)
    return run_top(settings.store.path, args.minutes, args.interval, args.once, settings.store.heartbeat_seconds)


def cmd_browse(args: argparse.Namespace) -> int:
    """Open the database read-only in Datasette, with canned queries (needs the xmppmon[browse] extra)."""
    from agent.cli.browse import run_browse

    return run_browse(settings_of(args).store.path, args.host, args.port)


def register(add: Add) -> None:
    p = add("top", cmd_top)
    database_option(p)
    p.add_argument("--once", action="store_true", help="print one frame and exit (for scripts)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default %(default)s)")
    p.add_argument("--minutes", type=float, default=5.0, help="sparkline window in minutes (default %(default)s)")

    p = add("browse", cmd_browse)
    database_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8001, help="port (default %(default)s)")
