"""What every command shares: settings with ``--database``, logging, table output, the ``add`` helper."""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from agent.config import Settings, load_settings

Command = Callable[[argparse.Namespace], int]
#: ``add(name, func, **kw)``: a sub-command whose help is the function's docstring.
Add = Callable[..., argparse.ArgumentParser]


def settings_of(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if getattr(args, "database", None):
        settings.store.path = Path(args.database)
    return settings


def setup_logs(settings: Settings) -> None:
    from agent.logs import secrets_of, setup_logging

    setup_logging(settings.log, secrets=secrets_of(settings))


def database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", metavar="PATH", help="SQLite file (default: XMPPMON_STORE__PATH)")


def print_rows(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> None:
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
