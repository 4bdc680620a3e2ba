"""``xmppmon run`` (the agent) and ``xmppmon sidecar`` (the relay): the two long-running processes."""

from __future__ import annotations

import argparse
import asyncio

from agent.cli.common import Add, database_option, settings_of, setup_logs


def cmd_run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM or Ctrl-C; SIGHUP reloads the settings (systemctl reload)."""
    settings = settings_of(args)
    setup_logs(settings)
    from agent.app import run_agent

    asyncio.run(run_agent(settings, load=lambda: settings_of(args)))
    return 0


def cmd_sidecar(args: argparse.Namespace) -> int:
    """Relay alert notifications to the sinks of XMPPMON_SIDECAR__SINKS until SIGTERM; SIGHUP reloads."""
    settings = settings_of(args)
    setup_logs(settings)
    from agent.sidecar.runner import run_sidecar

    asyncio.run(run_sidecar(settings, load=lambda: settings_of(args)))
    return 0


def register(add: Add) -> None:
    add("run", cmd_run)
    database_option(add("sidecar", cmd_sidecar))
