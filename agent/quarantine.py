"""The quarantine as a dead-letter queue: list it, show one entry, replay entries against the current contract.

Replay re-reads each quarantined ``<event/>`` as the plugin stored it and parses it again with the
contract of this version and the settings in force now (``monitor.max_payload_bytes``,
``monitor.namespace``). What is valid now moves to its table (the SQL and the transaction are
``agent.store.quarantine``'s); what is not stays, with the reason it still fails.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from agent.config import Settings
from agent.events import Event, InvalidEvent, parse_event
from agent.store.quarantine import Entry, Outcome, get_entry, list_entries, open_replay, replay_chunk

__all__ = ["Entry", "Outcome", "Replay", "get_entry", "list_entries", "reparse", "replay"]

#: What the plugin appends to a raw text it cut at 256 KiB (plugins/monitor_events).
_TRUNCATED = re.compile(r"… \[truncated, \d+ characters in all\]\Z")


def reparse(raw: str, namespace: str, max_payload_bytes: int) -> Event:
    """The event in a quarantined raw text, validated now; raises InvalidEvent with the reason it still fails."""
    if _TRUNCATED.search(raw):
        raise InvalidEvent("the raw text was cut when it was quarantined (over 256 KiB): it cannot be replayed")
    try:
        # Wrapped: the serialised element may carry its tail text after the closing tag.
        wrapper = ET.fromstring(f"<quarantined>{raw}</quarantined>")
    except ET.ParseError as exc:
        raise InvalidEvent(f"the raw text is not XML: {exc}") from None
    element = wrapper[0] if len(wrapper) else None
    if element is None or element.tag != f"{{{namespace}}}event":
        raise InvalidEvent(f"the raw text is not an <event/> element of {namespace}")
    return parse_event(dict(element.attrib), element.text, max_payload_bytes)


@dataclass
class Replay:
    """What one replay did: every outcome's counts, and the reasons entries stayed."""

    moved: int = 0
    duplicates: int = 0
    kept: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def replay(
    settings: Settings,
    *,
    reason: str | None = None,
    ids: Iterable[int] | None = None,
    dry_run: bool = False,
    report: Callable[[Outcome], None] | None = None,
) -> Replay:
    """Replay the matching quarantined events in chunks, each one short transaction; ``report`` sees each outcome."""
    monitor = settings.monitor

    def parse(entry: Entry) -> Event:
        return reparse(entry.raw, monitor.namespace, monitor.max_payload_bytes)

    done = Replay()
    wanted = list(ids or ())
    conn = open_replay(Path(settings.store.path), settings.store.busy_timeout_ms)
    try:
        after = 0
        while outcomes := replay_chunk(conn, parse, after, reason=reason, ids=wanted, dry_run=dry_run):
            for outcome in outcomes:
                if outcome.moved:
                    done.moved += 1
                    done.duplicates += outcome.why.startswith("already")
                else:
                    done.kept += 1
                    done.reasons[outcome.why] += 1
                if report is not None:
                    report(outcome)
            after = outcomes[-1].entry.id
    finally:
        conn.close()
    return done
