"""Per sink and alert, in order: which pending notifications go in the next round, and which are superseded.

Pure: the outbox reads a sink's pending rows, asks :func:`plan`, marks the superseded ones and reads the
chosen ones. Two rules hold for every sink:

* **one at a time per alert**: only the oldest pending notification of an alert can be sent, and only
  once its own ``next_attempt_at`` has come. A parked ``firing`` therefore holds back the ``resolved``
  that followed it, and a round never carries two notifications of one alert (a 207 or a split batch
  could otherwise confirm the later one and fail the earlier);
* **replace what the sink allows** (the sink's :data:`Policy`):

  - ``latest`` (Alertmanager, which keeps only an alert's current state): every pending notification
    of an alert but the newest is superseded, so the newest goes at once, even past a parked one;
  - ``ordered`` (webhook, XMPP: receivers that may keep a history): every transition is sent, in
    order; only a pending ``repeat`` (a reminder that the alert still fires, with a newer count) is
    superseded when a later notification of the same alert is pending.

A superseded notification is final, like ``delivered`` and ``dead``: it is never sent to that sink.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Policy = Literal["ordered", "latest"]


@dataclass(frozen=True, slots=True)
class Pending:
    """One pending (sink, notification) row, without the alert's snapshot."""

    id: int
    alert_id: int
    transition: str
    key: str
    next_attempt_at: str  # RFC 3339 UTC, fixed width, so strings compare as times


@dataclass(slots=True)
class Plan:
    """The notifications to send now (ids, oldest first) and those superseded: (id, key of the newest)."""

    due: list[int] = field(default_factory=list)
    superseded: list[tuple[int, str]] = field(default_factory=list)


def plan(pending: Iterable[Pending], policy: Policy, now: str, limit: int) -> Plan:
    """Apply the rules above to one sink's pending rows; ``now`` in the same format as ``next_attempt_at``."""
    queues: dict[int, list[Pending]] = {}
    for row in sorted(pending, key=lambda p: p.id):
        queues.setdefault(row.alert_id, []).append(row)
    out = Plan()
    for queue in queues.values():
        newest = queue[-1]
        # 'latest' keeps the newest alone; 'ordered' drops only the repeats that are not the newest.
        keep = [newest] if policy == "latest" else [p for p in queue if p.transition != "repeat" or p is newest]
        kept = {p.id for p in keep}
        out.superseded.extend((p.id, newest.key) for p in queue if p.id not in kept)
        head = keep[0]
        if head.next_attempt_at <= now:
            out.due.append(head.id)
    out.due.sort()
    del out.due[limit:]
    return out
