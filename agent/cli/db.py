"""``xmppmon doctor``: operator checks of the configuration and the database."""

from __future__ import annotations

import argparse

from agent.cli.common import Add, database_option


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check configuration, database, permissions, CA file and DNS; send nothing. Exit 1 on failure."""
    from agent.doctor import run_checks

    checks = run_checks(args.config, args.database)
    for check in checks:
        print(check.line())
    failed = sum(check.status == "FAIL" for check in checks)
    print(f"{len(checks)} checks, {failed} failed")
    return 1 if failed else 0


def register(add: Add) -> None:
    database_option(add("doctor", cmd_doctor))
