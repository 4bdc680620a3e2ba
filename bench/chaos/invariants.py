"""The soak's invariants, as pure functions over what was sent, stored and delivered.

Each check returns a :class:`Check`: pass or fail, the numbers behind it, and evidence lines that
say which ids, alerts or notifications broke it and which faults were around at the time.
Times in evidence are seconds after the soak's start (``t0``).
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from agent.events import dumps_value, epoch
from agent.lab.emulator.wire import HISTORY_KINDS

from .observe import quarantine_text_key

COUNTED_KINDS = frozenset((*HISTORY_KINDS, "api"))
ID_LESS_DEFECTS = frozenset({"missing-id", "empty-id"})


@dataclass
class Check:
    name: str
    ok: bool
    numbers: dict[str, Any]
    evidence: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.numbers.items())


@dataclass(frozen=True)
class Span:
    """A fault as the checks see it: number, kind, start and end (epoch seconds)."""

    n: int
    kind: str
    start: float
    end: float
    landed: bool | None = None

    def label(self, t0: float) -> str:
        aim = "" if self.landed is None else (" (landed)" if self.landed else " (missed its moment)")
        return f"#{self.n} {self.kind}{aim} {self.start - t0:.1f}-{self.end - t0:.1f}s"


def near(spans: Iterable[Span], start: float, end: float) -> list[Span]:
    return [s for s in spans if s.start <= end and s.end >= start]


RELAY_KINDS = ("sidecar_", "webhook_")


def describe(spans: Iterable[Span], start: float, end: float, t0: float, relay: bool = False) -> str:
    """The faults overlapping [start, end]: in full those that can touch what is checked (the event
    path, or with ``relay`` the sidecar and the webhook), the others only counted."""
    around = near(spans, start, end)
    relevant = [s for s in around if s.kind.startswith(RELAY_KINDS) == relay]
    others = Counter(s.kind for s in around if s.kind.startswith(RELAY_KINDS) != relay)
    text = ", ".join(s.label(t0) for s in relevant) or "none"
    if others:
        text += " (also " + ", ".join(f"{n} {k}" for k, n in sorted(others.items())) + ")"
    return text


#: Agent log lines worth showing next to a failure: how it recovered, and what went wrong.
RECOVERY = (
    "session started as", "resumed at h=", "archive replayed after", "stream resumed:", "disconnected:", "no answer to ping",
    "cannot commit", "database writes recovered", "pausing reads", "Error handling", "unexpected error",
)  # fmt: skip


def log_lines(log: Sequence[tuple[float, str]], start: float, end: float, t0: float, most: int = 8) -> list[str]:
    """Recovery lines of the agent's log between ``start`` and ``end``, as evidence."""
    hits = [f"    {_rel(t, t0)} {m[:150]}" for t, m in log if start <= t <= end and any(k in m for k in RECOVERY)]
    if len(hits) > most:
        hits = [*hits[: most // 2], f"    ... {len(hits) - most} more ...", *hits[-most // 2 :]]
    return hits


def _rel(t: float, t0: float) -> str:
    return f"{t - t0:.1f}s"


# -- events ------------------------------------------------------------------------------------


def check_events(
    expected: set[str],
    stored: Counter[str],
    sent_ts: dict[str, str],
    spans: Sequence[Span],
    t0: float,
    archived: set[str] | None = None,
    log: Sequence[tuple[float, str]] = (),
) -> Check:
    """Every valid event id of a history or api kind exactly once in events/api_calls."""
    lost = expected - set(stored)
    duplicated = {k: v for k, v in stored.items() if v > 1}
    unexpected = set(stored) - expected
    numbers = {
        "sent": len(expected), "stored": len(set(stored) & expected), "lost": len(lost),
        "duplicated_rows": sum(v - 1 for v in duplicated.values()), "unexpected": len(unexpected),
    }  # fmt: skip
    evidence = []
    for cluster in clusters(sorted(lost, key=lambda i: sent_ts.get(i, "")), sent_ts):
        first, last = epoch(sent_ts[cluster[0]]), epoch(sent_ts[cluster[-1]])
        in_archive = (
            "" if archived is None else f"; {sum(i in archived for i in cluster)} of them still in the server's archive"
        )
        evidence.append(
            f"lost {len(cluster)} event(s) sent {_rel(first, t0)}-{_rel(last, t0)}{in_archive};"
            f" e.g. {', '.join(cluster[:3])}; faults from 5 s before to 30 s after:"
            f" {describe(spans, first - 5, last + 30, t0)}; agent log:"
        )
        evidence.extend(log_lines(log, first - 5, last + 30, t0))
    if duplicated:
        sample = sorted(duplicated)[:5]
        evidence.append(f"{len(duplicated)} id(s) stored more than once, e.g. {', '.join(sample)}")
    if unexpected:
        evidence.append(f"{len(unexpected)} stored id(s) never sent, e.g. {', '.join(sorted(unexpected)[:5])}")
    return Check("events exactly once", not (lost or duplicated or unexpected), numbers, evidence)


def clusters(ids: list[str], sent_ts: dict[str, str], gap: float = 2.0) -> list[list[str]]:
    """Ids (sorted by send time) split wherever two sends are more than ``gap`` seconds apart."""
    out: list[list[str]] = []
    last = None
    for i in ids:
        if i not in sent_ts:
            continue
        t = epoch(sent_ts[i])
        if last is None or t - last > gap:
            out.append([])
        out[-1].append(i)
        last = t
    return out


# -- state tables ------------------------------------------------------------------------------


def state_key(kind: str, app: str, payload: dict[str, Any]) -> tuple[str, ...]:
    if kind == "device" or kind == "token":
        return (kind, app, payload["device_id"])
    if kind == "tag":
        return (kind, app, payload["device_id"], payload["name"])
    return (kind, app, payload["device_id"], payload["campaign_id"])


def state_value(kind: str, text: str, payload: dict[str, Any]) -> Any:
    """The value columns the store writes for a state event (agent.store._state_row)."""
    if kind == "device":
        return text
    if kind == "tag":
        return dumps_value(payload.get("value"))
    if kind == "token":
        return (payload["token"], int(payload["valid"]))
    return payload["action"]


def check_state(sent: Iterable[dict[str, Any]], rows: dict[tuple[str, ...], tuple[str, str, Any]], t0: float) -> Check:
    """State tables hold, per key, the value of the newest event (by event time) sent for it.

    ``sent``: the emulator's records of state events; ``rows``: key -> (ts, event_id, value) as
    stored. Events sharing the newest time are a tie: any of them is right (the store keeps the
    last to arrive, and replays change arrival order).
    """
    newest: dict[tuple[str, ...], tuple[str, dict[str, Any]]] = {}
    value_of: dict[str, Any] = {}
    for rec in sent:
        payload = orjson.loads(rec["p"])
        key = state_key(rec["kind"], rec["app"], payload)
        value_of[rec["id"]] = state_value(rec["kind"], rec["p"], payload)
        ts = rec["ts"]
        top = newest.get(key)
        if top is None or ts > top[0]:
            newest[key] = (ts, {rec["id"]: None})
        elif ts == top[0]:
            top[1][rec["id"]] = None
    stale, missing, wrong, ties, unknown = [], [], [], 0, []
    for key, (ts, ids) in newest.items():
        row = rows.get(key)
        if row is None:
            missing.append(key)
            continue
        row_ts, row_id, row_value = row
        if row_id not in value_of:
            unknown.append(key)
        elif row_id not in ids:
            stale.append((key, row_ts, ts))
        elif value_of[row_id] != row_value:
            wrong.append((key, row_id))
        elif len(ids) > 1:
            ties += 1
    numbers = {"keys": len(newest), "latest": len(newest) - len(stale) - len(missing) - len(wrong) - len(unknown),
               "stale": len(stale), "missing": len(missing), "wrong_value": len(wrong), "tied_ok": ties}  # fmt: skip
    evidence = []
    if stale:
        sample = "; ".join(f"{'/'.join(k)} holds {r} but {s} was sent" for k, r, s in stale[:3])
        evidence.append(f"{len(stale)} key(s) hold an older value: {sample}")
    if missing:
        evidence.append(f"{len(missing)} key(s) never stored, e.g. {'; '.join('/'.join(k) for k in missing[:3])}")
    if wrong:
        evidence.append(f"{len(wrong)} row(s) whose value is not their event's, e.g. {wrong[:3]}")
    if unknown:
        evidence.append(f"{len(unknown)} row(s) naming an event never sent, e.g. {unknown[:3]}")
    return Check("state tables hold the latest value", not (stale or missing or wrong or unknown), numbers, evidence)


# -- quarantine --------------------------------------------------------------------------------


def malformed_key(rec: dict[str, Any]) -> str:
    return "text:" + rec["text"] if rec["defect"] in ID_LESS_DEFECTS else rec["id"]


def check_quarantine(
    sent: Iterable[dict[str, Any]],
    rows: Iterable[tuple[str | None, str, str]],
    spans: Sequence[Span],
    t0: float,
    log: Sequence[tuple[float, str]] = (),
) -> Check:
    """One quarantine row per malformed event sent. ``rows``: (event_id, raw, received_at)."""
    want: Counter[str] = Counter(malformed_key(rec) for rec in sent)
    got: Counter[str] = Counter()
    seen_at: dict[str, list[float]] = defaultdict(list)
    for event_id, raw, received_at in rows:
        key = event_id or quarantine_text_key(raw)
        got[key] += 1
        seen_at[key].append(epoch(received_at))
    extra = {k: got[k] - want[k] for k in got if k in want and got[k] > want[k]}
    missing = {k: want[k] - got[k] for k in want if got[k] < want[k]}
    unmatched = {k: v for k, v in got.items() if k not in want}
    numbers = {"malformed_sent": sum(want.values()), "rows": sum(got.values()), "extra_rows": sum(extra.values()),
               "events_with_extra": len(extra), "missing": sum(missing.values()), "unmatched_rows": sum(unmatched.values())}  # fmt: skip
    evidence = []
    if extra:
        later = sorted(t for k in extra for t in sorted(seen_at[k])[1:])
        windows = clusters_of_times(later)
        for start, end, count in windows[:6]:
            evidence.append(
                f"{count} extra quarantine row(s) written {_rel(start, t0)}-{_rel(end, t0)};"
                f" faults in the 10 s before: {describe(spans, start - 10, end, t0)}; agent log:"
            )
            evidence.extend(log_lines(log, start - 10, end, t0, most=4))
        sample = [k if not k.startswith("text:") else k[:60] for k in list(extra)[:3]]
        evidence.append(f"e.g. {', '.join(sample)} quarantined {', '.join(str(got[k]) for k in list(extra)[:3])} times")
    if missing:
        evidence.append(
            f"{len(missing)} malformed event(s) never quarantined, e.g. {', '.join(k[:60] for k in list(missing)[:3])}"
        )
    if unmatched:
        evidence.append(
            f"{len(unmatched)} quarantine key(s) match nothing sent, e.g. {', '.join(k[:60] for k in list(unmatched)[:3])}"
        )
    return Check("quarantine: one row per malformed event", not (extra or missing or unmatched), numbers, evidence)


def clusters_of_times(times: list[float], gap: float = 3.0) -> list[tuple[float, float, int]]:
    out: list[tuple[float, float, int]] = []
    for t in times:
        if out and t - out[-1][1] <= gap:
            start, _end, n = out[-1]
            out[-1] = (start, t, n + 1)
        else:
            out.append((t, t, 1))
    return out


# -- notifications -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    id: int
    key: str
    alert_id: int
    transition: str
    created: float
    identity: str  # source/app/code/api


@dataclass(frozen=True)
class Accepted:
    t: float
    sink: str
    key: str


def check_delivery(
    notifications: Sequence[Notification],
    accepted: Sequence[Accepted],
    sink: str,
    kills: Sequence[float],
    states: dict[int, tuple[str, int, str | None]],
    t0: float,
    only_after: int = 0,
) -> Check:
    """Every notification (with id > ``only_after``) accepted by ``sink`` at least once, but a
    ``repeat`` the sidecar marked superseded; repeats counted, and those without a sidecar kill (or
    crash) between two acceptances are unexplained.

    ``states``: notification id -> (delivery state, attempts, reason) for this sink.
    """
    times: dict[str, list[float]] = defaultdict(list)
    for a in accepted:
        if a.sink == sink:
            times[a.key].append(a.t)
    due = [n for n in notifications if n.id > only_after]
    # A pending repeat replaced by a later notification of its alert is never sent (docs/alerts.md);
    # any other notification marked superseded for a webhook sink stays undelivered.
    superseded = [
        n for n in due if n.key not in times and n.transition == "repeat" and states.get(n.id, ("",))[0] == "superseded"
    ]  # fmt: skip
    skipped = {n.key for n in superseded}
    undelivered = [n for n in due if n.key not in times and n.key not in skipped]
    repeated = {k: ts for k, ts in times.items() if len(ts) > 1}
    unexplained = []
    for key, ts in repeated.items():
        ts = sorted(ts)
        if not all(any(a < k <= b for k in kills) for a, b in itertools.pairwise(ts)):
            unexplained.append(key)
    dead = [nid for nid, (state, _a, _r) in states.items() if state == "dead"]
    numbers = {"notifications": len(due), "delivered": len(due) - len(undelivered) - len(superseded),
               "superseded_repeats": len(superseded), "undelivered": len(undelivered),
               "delivered_more_than_once": len(repeated), "of_which_unexplained": len(unexplained),
               "dead_lettered": len(dead)}  # fmt: skip
    evidence = []
    for n in undelivered[:5]:
        state = states.get(n.id)
        evidence.append(
            f"notification {n.id} ({n.transition} of {n.identity}, created {_rel(n.created, t0)}) never accepted;"
            f" delivery_state {state}"
        )
    if len(undelivered) > 5:
        evidence.append(f"... and {len(undelivered) - 5} more undelivered")
    by_key = {n.key: n for n in notifications}
    for key in unexplained[:5]:
        n = by_key.get(key)
        what = f"{n.id} ({n.transition} of {n.identity})" if n else key
        evidence.append(
            f"notification {what} accepted at {', '.join(_rel(t, t0) for t in sorted(times[key]))} with no sidecar kill between"
        )
    ok = not undelivered and not unexplained and not dead
    return Check(f"notifications delivered ({sink})", ok, numbers, evidence)


def check_order(
    notifications: Sequence[Notification], accepted: Sequence[Accepted], sink: str, spans: Sequence[Span], t0: float
) -> Check:
    """Per alert, the sink saw its transitions in the order they were made (each arrival, repeats
    included, is not older than one already seen for that alert)."""
    by_key = {n.key: n for n in notifications}
    top: dict[int, Notification] = {}
    seq: dict[int, list[tuple[float, Notification]]] = defaultdict(list)
    violations = []
    for a in sorted((a for a in accepted if a.sink == sink), key=lambda a: a.t):
        n = by_key.get(a.key)
        if n is None:
            continue
        seq[n.alert_id].append((a.t, n))
        best = top.get(n.alert_id)
        if best is not None and n.id < best.id:
            violations.append((a.t, n, best))
        if best is None or n.id > best.id:
            top[n.alert_id] = n
    alerts = {n.alert_id for _t, n, _b in violations}
    numbers = {"alerts": len(seq), "arrivals": sum(map(len, seq.values())), "out_of_order": len(violations),
               "alerts_affected": len(alerts)}  # fmt: skip
    evidence = []
    for t, n, best in violations[:5]:
        evidence.append(
            f"{n.identity}: {n.transition} #{n.id} (created {_rel(n.created, t0)}) arrived {_rel(t, t0)},"
            f" after {best.transition} #{best.id} (created {_rel(best.created, t0)}); relay faults between:"
            f" {describe(spans, n.created, t, t0, relay=True)}"
        )
    return Check(f"transitions in order per alert ({sink})", not violations, numbers, evidence)


def check_new_sink(
    notifications: Sequence[Notification], accepted: Sequence[Accepted], sink: str, top_at_add: int, t0: float
) -> Check:
    """A sink added during the run gets the current state of each open alert and nothing older:
    of the notifications made before it was added, only the latest of each alert still open."""
    latest: dict[int, Notification] = {}
    for n in notifications:
        if n.id <= top_at_add and (n.alert_id not in latest or n.id > latest[n.alert_id].id):
            latest[n.alert_id] = n
    allowed = {n.key for n in latest.values() if n.transition != "resolved"}
    got = {a.key for a in accepted if a.sink == sink}
    history = [n for n in notifications if n.id <= top_at_add and n.key in got and n.key not in allowed]
    resolved_history = [n for n in history if latest[n.alert_id].transition == "resolved"]
    numbers = {"before_it_was_added": sum(n.id <= top_at_add for n in notifications), "history_received": len(history),
               "of_alerts_already_resolved": len(resolved_history), "open_alerts_then": len(allowed)}  # fmt: skip
    evidence = []
    if history:
        kinds = Counter(n.transition for n in history)
        evidence.append(
            f"the new sink received {len(history)} notification(s) made before it was added"
            f" ({', '.join(f'{v} {k}' for k, v in kinds.items())}), {len(resolved_history)} of alerts already resolved;"
            f" e.g. #{history[0].id} {history[0].transition} of {history[0].identity}"
        )
    return Check(f"new sink gets no history ({sink})", not history, numbers, evidence)


# -- the agent process -------------------------------------------------------------------------


def check_rss(
    samples: Sequence[tuple[float, int, int]], first: float | None, last: float | None, bound_mb: float,
    growth_mb: float, t0: float,
) -> Check:  # fmt: skip
    """Agent RSS under ``bound_mb`` throughout, and after the last fault not more than ``growth_mb``
    above what it was after the first. Each of those two is the median of the steady samples (10 s
    or more after that process started: a new process is still loading) in the 20 s after that
    fault settled, or of the next five steady samples if there are none in that window."""
    if not samples:
        return Check("agent RSS bounded", False, {"samples": 0}, ["no RSS sample was taken"])
    peak_t, _pid, peak = max(samples, key=lambda s: s[2])
    born: dict[int, float] = {}
    for t, pid, _kb in samples:
        born.setdefault(pid, t)
    steady = [(t, kb) for t, pid, kb in samples if t - born[pid] >= 10.0]

    def around(t: float | None) -> float | None:
        if t is None:
            return None
        window = [kb for ts, kb in steady if t <= ts <= t + 20] or [kb for ts, kb in steady if ts >= t][:5]
        return statistics.median(window) / 1024 if window else None

    a, b = around(first), around(last)
    growth = None if a is None or b is None else b - a
    numbers = {"peak_mb": round(peak / 1024, 1), "bound_mb": bound_mb,
               "after_first_fault_mb": None if a is None else round(a, 1),
               "after_last_fault_mb": None if b is None else round(b, 1),
               "growth_mb": None if growth is None else round(growth, 1), "growth_limit_mb": growth_mb}  # fmt: skip
    evidence = []
    ok = peak / 1024 <= bound_mb and (growth is None or growth <= growth_mb)
    if peak / 1024 > bound_mb:
        evidence.append(f"peak {peak / 1024:.0f} MB at {_rel(peak_t, t0)}")
    if growth is not None and growth > growth_mb:
        evidence.append(f"grew {growth:.0f} MB between the first and the last fault")
    return Check("agent RSS bounded", ok, numbers, evidence)


def check_integrity(final: str, midway: Sequence[tuple[float, str]], t0: float) -> Check:
    bad = [(t, r) for t, r in midway if r != "ok"]
    numbers = {"final": final, "checks_during_run": len(midway), "failed_during_run": len(bad)}
    evidence = [f"quick_check at {_rel(t, t0)}: {r[:200]}" for t, r in bad[:3]]
    if final != "ok":
        evidence.append(f"final integrity_check: {final[:300]}")
    return Check("integrity_check", final == "ok" and not bad, numbers, evidence)
