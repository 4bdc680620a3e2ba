"""``xmppmon quarantine``: list quarantined events, show one, replay them against the current contract."""

from __future__ import annotations

import argparse

import orjson

from agent.cli.common import Add, database_option, print_rows, settings_of
from agent.exceptions import XmppmonError


def cmd_quarantine(args: argparse.Namespace) -> int:
    """List the quarantined events, show one, or replay them against the current contract and settings."""
    from agent import quarantine
    from agent.export import parse_time

    settings = settings_of(args)
    db = settings.store.path
    ids = [*args.ids, *(args.id or ())]
    if args.action == "list":
        since = parse_time(args.since) if args.since else None
        entries = quarantine.list_entries(db, args.reason, since, args.limit)
        columns = ["id", "received_at", "app", "event_id", "bytes", "reason"]
        rows = [(e.id, e.received_at, e.app, e.event_id, len(e.raw.encode()), e.reason) for e in entries]
        print_rows(columns, rows, "json" if args.json else "table")
        return 0
    if args.action == "show":
        if not ids:
            raise XmppmonError("quarantine show needs an id: xmppmon quarantine show ID")
        for entry_id in ids:
            entry = quarantine.get_entry(db, entry_id)
            if args.json:
                print(orjson.dumps(entry).decode())
                continue
            for name in ("id", "received_at", "sender", "app", "event_id", "reason"):
                print(f"{name + ':':<13}{getattr(entry, name)}")
            print(f"raw:\n{entry.raw}")
        return 0
    if args.reason and ids:
        raise XmppmonError("quarantine replay takes --reason or --id, not both")
    verb = ("would move", "would keep") if args.dry_run else ("moved", "kept")

    def report(outcome: quarantine.Outcome) -> None:
        e = outcome.entry
        what = f"{e.id} (event {e.event_id or '?'}{', ' + outcome.kind if outcome.kind else ''})"
        print(f"{verb[0] if outcome.moved else verb[1]} {what}: {outcome.why}", flush=True)

    done = quarantine.replay(settings, reason=args.reason, ids=ids, dry_run=args.dry_run, report=report)
    if not done.moved and not done.kept:
        print("nothing to replay: no quarantined event matches")
        return 0
    duplicates = f" ({done.duplicates} already stored)" if done.duplicates else ""
    print(f"{verb[0]} {done.moved}{duplicates}, {verb[1]} {done.kept}", end="")
    print(" — still failing: " + "; ".join(f"{n}: {r}" for r, n in done.reasons.most_common()) if done.kept else "")
    return 0


def register(add: Add) -> None:
    p = add("quarantine", cmd_quarantine)
    p.add_argument("action", choices=("list", "show", "replay"))
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="entries to show or replay (default: all)")
    database_option(p)
    p.add_argument("--id", type=int, action="append", metavar="ID", help="replay: this entry (repeatable)")
    p.add_argument("--reason", metavar="TEXT", help="only entries whose reason contains TEXT (list, replay)")
    p.add_argument("--since", metavar="TIME", help="list: only entries received since TIME (RFC 3339 or date)")
    p.add_argument("--limit", type=int, default=100, help="list: at most this many, newest first (default 100)")
    p.add_argument("--dry-run", action="store_true", help="replay: say what would move, change nothing")
    p.add_argument("--json", action="store_true", help="list/show as JSON lines")
