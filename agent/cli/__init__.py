"""The ``xmppmon`` command: the parser, then one module per command group.

``run``     run (the agent), sidecar (the relay)
``inspect`` status, query, tail, alerts (read-only)
``export``  export jobs
``quarantine`` list, show and replay quarantined events
``db``      doctor; db stats, backup, vacuum
``lab``     emulate, demo (test and demo tooling)
``observe`` top (a live view), browse (Datasette)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from agent import __version__
from agent.cli import db, export, inspect, lab, observe, quarantine, run
from agent.cli.common import Command
from agent.exceptions import ConfigError, XmppmonError

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmppmon",
        description="Keep a Monitor API session alive over XMPP and persist its events to SQLite.",
        epilog="Settings come from XMPPMON_* variables, the TOML file, and $CREDENTIALS_DIRECTORY.",
    )
    parser.add_argument("--version", action="version", version=f"xmppmon {__version__}")
    parser.add_argument("--config", metavar="PATH", help="TOML settings file (default: $XMPPMON_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Command, **kw: Any) -> argparse.ArgumentParser:
        about = (func.__doc__ or "").strip()
        p = sub.add_parser(name, help=about, description=about, **kw)
        p.set_defaults(func=func)
        return p

    for group in (run, lab, inspect, db, export, quarantine, observe):
        group.register(add)
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
