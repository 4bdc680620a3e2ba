"""The chaos soak: a real Prosody or ejabberd, the emulator, the agent and the sidecar under overlapping faults.

Usage (as root: it mounts a tmpfs for the database and cuts TCP connections with ``ss -K``)::

    .venv/bin/python bench/soak.py --seed 1 --minutes 3 [--server ejabberd] [--json soak.json] [--workdir DIR]

It streams at a sustained rate with bursts (every kind, malformed events, duplicates, api status
codes whose alerts fire and resolve), injects faults on a schedule fixed by ``--seed`` (kill -9 of
the agent, also during an archive catch-up and during a writer backlog; kill -9 of the sidecar;
the server frozen, killed and restarted (server_freeze, server_kill; formerly prosody_*); ``ss -K`` cuts; the database's tmpfs filled; the database
locked by an outside writer; the webhook answering 500, 429, 207, 413, hanging, or down; a sink
added mid-run), checks after each fault that it settles, and at the end (stream over, quiescence,
SIGTERM) checks the invariants against the database, the emulator's record and the receiver's
log. It prints a table of faults x results and of invariants, writes ``--json`` if asked, and
exits 1 if any invariant fails (2 if the harness itself failed). The work directory (logs, the
emulator's record, a copy of the database) is kept; its path is printed.

The server is Prosody (default) or ejabberd (``--server ejabberd``: Debian's ejabberd and
erlang-p1-sqlite3, as ``make deps`` installs them; SQL archive, no shaper, no offline limit,
``max_ack_queue`` 500; bench/chaos/servers.py says why). A seed's plan is the same on both servers.

See bench/chaos/ for the parts, and docs/reliability.md for what the invariants promise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.lab.servers import SERVER_KINDS  # noqa: E402
from bench.chaos import report  # noqa: E402
from bench.chaos.run import Options, soak_main  # noqa: E402


def parse(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--seed", type=int, required=True, help="fixes the stream and the fault schedule")
    a("--minutes", type=float, required=True, help="length of the stream (faults fall within it)")
    a(
        "--server",
        default="prosody",
        choices=list(SERVER_KINDS),
        help="the XMPP server: prosody or ejabberd (same plan for a seed on both) (default %(default)s)",
    )
    a(
        "--archive",
        default="sql",
        choices=["sql", "internal"],
        help="Prosody's archive storage: sql (SQLite, needs lua-dbi-sqlite3) or internal (files; every MAM page"
        " reads the whole archive, so catch-ups crawl); ejabberd's is always sql (default %(default)s)",
    )
    a("--rate", type=float, default=400.0, help="base events/s (bursts are 5x) (default %(default)s)")
    a("--json", type=Path, default=None, metavar="PATH", help="write the summary as JSON")
    a("--workdir", type=Path, default=None, help="work directory (default: a new one under $TMPDIR)")
    a("--rss-limit-mb", type=float, default=200.0, help="agent RSS bound (default %(default)s MB)")
    a("--rss-growth-mb", type=float, default=32.0, help="allowed RSS growth first->last fault (MB)")
    a("--settle-deadline", type=float, default=60.0, help="seconds for a fault to settle (default %(default)s)")
    a("--quiesce-deadline", type=float, default=120.0, help="seconds to wait for quiescence at the end")
    a("--tmpfs-mb", type=int, default=None, help="size of the database's tmpfs (default: from the plan)")
    a(
        "--flood",
        type=int,
        default=0,
        metavar="EVENTS",
        help="add a flood of EVENTS unpaced events while the disk is full (e.g. 200000; needs --minutes 2.5 or more)",
    )
    a(
        "--only",
        default=None,
        metavar="KINDS",
        help="keep only these fault kinds (comma list; '' for none: a control run that must pass;"
        " prosody_freeze/prosody_kill still name server_freeze/server_kill)",
    )
    a("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    return Options(
        seed=args.seed, minutes=args.minutes, server=args.server, rate=args.rate, json_path=args.json,
        workdir=args.workdir, rss_limit_mb=args.rss_limit_mb, rss_growth_mb=args.rss_growth_mb,
        settle_deadline=args.settle_deadline, quiesce_deadline=args.quiesce_deadline, tmpfs_mb=args.tmpfs_mb,
        quiet=args.quiet, flood=args.flood, archive=args.archive,
        only=None if args.only is None else frozenset(k.strip() for k in args.only.split(",") if k.strip()),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    try:
        soak, result = asyncio.run(soak_main(opts))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"the soak itself failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    assert result is not None
    checks = result["checks"]
    print(report.render(soak, checks, result["agent_log"]), flush=True)
    if opts.json_path is not None:
        extra = {"counters": result["snapshot"]["counters"], "agent_log": result["agent_log"],
                 "sidecar_log": result["sidecar_log"]}  # fmt: skip
        data = report.summary(soak, checks, extra)
        opts.json_path.write_text(json.dumps(data, indent=1, default=str))
    harness = next(c for c in checks if c.name == "harness")
    if not harness.ok:
        return 2
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
