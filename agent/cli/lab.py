"""``xmppmon emulate`` and ``xmppmon demo``: the lab's commands (``agent.lab``, the ``lab`` extra).

The only part of the command line that imports ``agent.lab``, and only when one of these runs.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson

from agent.cli.common import Add


def cmd_emulate(args: argparse.Namespace) -> int:
    """Run the Monitor API emulator (an XEP-0114 component) until done or Ctrl-C."""
    from agent.config import LogSettings
    from agent.lab import emulator
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Local demo: a private Prosody, the emulated Monitor API, and the agent, on 127.0.0.1."""
    from agent.lab.demo import run_demo

    return run_demo(args)


def register(add: Add) -> None:
    from agent.lab.emulator.options import add_arguments

    p = add("emulate", cmd_emulate)
    add_arguments(p)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")

    p = add("demo", cmd_demo)
    p.add_argument("--duration", type=float, default=60, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--rate", type=float, default=200, help="events per second from the emulator")
    p.add_argument("--batch", type=int, default=5, help="events per stanza")
    p.add_argument("--workdir", metavar="DIR", help="keep the demo's files here (default: a temp dir)")
