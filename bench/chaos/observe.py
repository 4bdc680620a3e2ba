"""What the soak watches while it runs: sends, rows, deliveries, RSS; when each fault has settled.

A :class:`Tracker` reads, once per tick, what is new: rows of ``events``/``api_calls``/
``quarantine``/``notifications`` (by rowid, through one read-only connection), lines of the
emulator's record, and the receiver's accepted deliveries. From that it decides when each fault
has *settled*: every valid event sent in its window (from 2 s before it started until it ended)
is stored, and every notification made in that window was accepted by the sink. A fault that has
not settled ``deadline`` seconds after it ended is marked unsettled, and what of its window was
still missing then is kept as evidence (overlapping faults share windows, and so share losses).

It also notes, the moment they appear, the things that can only get worse: duplicated rows,
extra quarantine rows, notifications accepted twice, transitions out of order; each with the
faults active or recently ended at that moment.
"""

from __future__ import annotations

import bisect
import contextlib
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from agent.events import epoch, iso
from agent.lab.emulator.wire import HISTORY_KINDS

from .receiver import Receiver

COUNTED_KINDS = frozenset((*HISTORY_KINDS, "api"))
RECENT = 20.0  # seconds after a fault ended during which a regression is laid at its door


@dataclass
class FaultRun:
    """One fault as it happened."""

    n: int
    kind: str
    lane: str
    planned_at: float
    started: float = 0.0
    ended: float | None = None
    landed: bool | None = None  # for kinds that aim at a moment (catch-up, backlog)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    settled_s: float | None = None  # events and notifications
    events_settled_s: float | None = None
    notifications_settled_s: float | None = None
    unsettled: bool = False
    missing_events: list[str] = field(default_factory=list)  # sent in its window, not stored by its deadline
    ev_ptr: int | None = None
    notif_ptr: int | None = None
    undelivered: list[str] = field(default_factory=list)
    regressions: Counter[str] = field(default_factory=Counter)

    def as_dict(self, t0: float) -> dict[str, Any]:
        return {
            "n": self.n, "kind": self.kind, "lane": self.lane, "planned_at": self.planned_at,
            "started_s": round(self.started - t0, 2),
            "ended_s": None if self.ended is None else round(self.ended - t0, 2),
            "landed": self.landed, "notes": self.notes, "error": self.error,
            "settled_s": self.settled_s, "events_settled_s": self.events_settled_s,
            "notifications_settled_s": self.notifications_settled_s, "unsettled": self.unsettled,
            "missing_events": len(self.missing_events), "missing_sample": self.missing_events[:10],
            "undelivered": len(self.undelivered), "undelivered_sample": self.undelivered[:10],
            "regressions": dict(self.regressions),
        }  # fmt: skip


@dataclass
class Regression:
    t: float
    what: str
    amount: int
    sample: list[str]
    faults: list[int]


@dataclass
class Tracker:
    db: Path
    record: Path
    receiver: Receiver
    deadline: float = 60.0
    faults: list[FaultRun] = field(default_factory=list)
    # sends
    sent: list[tuple[str, str]] = field(default_factory=list)  # (ts, id) of counted kinds, in send order
    sent_ids: set[str] = field(default_factory=set)
    malformed_sent: int = 0
    _record_offset: int = 0
    _record_rest: bytes = b""
    # rows
    stored: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    quarantine_keys: Counter[str] = field(default_factory=Counter)
    notifications: list[tuple[int, str, int, str, float]] = field(default_factory=list)  # id, key, alert, tr, created
    _last: dict[str, int] = field(default_factory=lambda: {"events": 0, "api_calls": 0, "quarantine": 0,
                                                           "notifications": 0})  # fmt: skip
    _conn: sqlite3.Connection | None = None
    # deliveries
    accepted: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    # sink -> keys of repeats the sidecar marked superseded (docs/alerts.md: a pending repeat is
    # replaced by a later notification of its alert, and never sent to that sink)
    superseded: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _deliv_n: int = 0
    _notif_by_key: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (id, alert_id)
    _order_max: dict[tuple[str, int], int] = field(default_factory=dict)
    _early: list[Any] = field(default_factory=list)  # deliveries seen before their notification row
    regressions: list[Regression] = field(default_factory=list)
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # t, pid, kB
    integrity: list[tuple[float, str]] = field(default_factory=list)
    _last_integrity: float = 0.0
    errors: list[str] = field(default_factory=list)
    last_progress: float = field(default_factory=time.time)  # the last new row of events/api_calls/quarantine
    lock: threading.RLock = field(default_factory=threading.RLock)

    # -- reading -----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is None and self.db.exists():
            try:
                self._conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=2, check_same_thread=False)
            except sqlite3.Error as exc:
                self.errors.append(f"open: {exc}")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _read_rows(self) -> None:
        conn = self._connect()
        if conn is None:
            return
        progress = False
        try:
            for table in ("events", "api_calls"):
                rows = conn.execute(f"SELECT id, event_id FROM {table} WHERE id > ? ORDER BY id", (self._last[table],))
                for rowid, event_id in rows:
                    self.stored[event_id] += 1
                    self.rows += 1
                    self._last[table] = rowid
                    progress = True
            rows = conn.execute(
                "SELECT id, coalesce(event_id, ''), raw FROM quarantine WHERE id > ? ORDER BY id",
                (self._last["quarantine"],),
            )
            for rowid, event_id, raw in rows:
                self.quarantine_keys[event_id or quarantine_text_key(raw)] += 1
                self._last["quarantine"] = rowid
                progress = True
            rows = conn.execute(
                "SELECT id, key, alert_id, transition, created_at FROM notifications WHERE id > ? ORDER BY id",
                (self._last["notifications"],),
            )
            for rowid, key, alert_id, transition, created in rows:
                self.notifications.append((rowid, key, alert_id, transition, epoch(created)))
                self._notif_by_key[key] = (rowid, alert_id)
                self._last["notifications"] = rowid
            rows = conn.execute(
                "SELECT d.sink, n.key FROM delivery_state d JOIN notifications n ON n.id = d.notification_id"
                " WHERE d.state = 'superseded' AND n.transition = 'repeat'"
            )
            for sink, key in rows:
                self.superseded[sink].add(key)
        except sqlite3.Error as exc:  # a schema not created yet, a busy moment: next tick
            if "no such table" not in str(exc):
                self.errors.append(f"read: {exc}")
        if progress:
            self.last_progress = time.time()

    def _read_record(self) -> None:
        if not self.record.exists():
            return
        with self.record.open("rb") as f:
            f.seek(self._record_offset)
            data = f.read()
        if not data:
            return
        self._record_offset += len(data)
        data = self._record_rest + data
        lines = data.split(b"\n")
        self._record_rest = lines.pop()
        for line in lines:
            if not line:
                continue
            rec = orjson.loads(line)
            if rec["t"] == "V" and rec["kind"] in COUNTED_KINDS:
                self.sent.append((rec["ts"], rec["id"]))
                self.sent_ids.add(rec["id"])
            elif rec["t"] == "M":
                self.malformed_sent += 1

    def _read_deliveries(self) -> None:
        new = self.receiver.snapshot(self._deliv_n)
        self._deliv_n += len(new)
        pending = self._early + new
        self._early = []
        for d in pending:
            known = self._notif_by_key.get(d.key)
            if known is None:  # its row is not read yet: look again next tick
                self._early.append(d)
                continue
            counter = self.accepted[d.sink]
            counter[d.key] += 1
            if counter[d.key] == 2:
                self._regress(d.t, f"delivered twice ({d.sink})", 1, [d.key])
            nid, alert_id = known
            top = self._order_max.get((d.sink, alert_id), 0)
            if nid < top:
                self._regress(d.t, f"out of order ({d.sink})", 1, [f"alert {alert_id}: {nid} after {top}"])
            self._order_max[(d.sink, alert_id)] = max(top, nid)

    # -- the tick ----------------------------------------------------------------------------

    def tick(self, now: float, agent_pid: int | None, agent_rss: int | None) -> None:
        with self.lock:
            self._tick(now, agent_pid, agent_rss)

    def _tick(self, now: float, agent_pid: int | None, agent_rss: int | None) -> None:
        rows_before, q_before = self.rows - len(self.stored), self._extra_quarantine()
        # Rows first, then sends: a row can only be for something already in the record.
        self._read_rows()
        self._read_record()
        self._read_deliveries()
        dups = self.rows - len(self.stored)
        if dups > rows_before:
            sample = [k for k, v in self.stored.items() if v > 1][-5:]
            self._regress(now, "duplicated rows", dups - rows_before, sample)
        extra_q = self._extra_quarantine()
        if extra_q > q_before:
            sample = [k for k, v in self.quarantine_keys.items() if v > 1][-5:]
            self._regress(now, "extra quarantine rows", extra_q - q_before, sample)
        if agent_pid is not None and agent_rss is not None:
            self.rss.append((now, agent_pid, agent_rss))
        self._settle(now)

    def _extra_quarantine(self) -> int:
        return sum(v - 1 for v in self.quarantine_keys.values() if v > 1)

    def _regress(self, t: float, what: str, amount: int, sample: list[str]) -> None:
        near = [f.n for f in self.faults if f.started <= t and (f.ended is None or f.ended >= t - RECENT)]
        self.regressions.append(Regression(t, what, amount, sample, near))
        for f in self.faults:
            if f.n in near:
                f.regressions[what] += amount

    def _events_from(self, start: int, end_ts: str) -> int | None:
        """The index of the first unstored event from ``start`` sent at or before ``end_ts``; None if none."""
        sent, stored = self.sent, self.stored
        i = start
        while i < len(sent) and sent[i][0] <= end_ts:
            if sent[i][1] not in stored:
                return i
            i += 1
        return None

    def done(self, sink: str, key: str) -> bool:
        """The notification was accepted by ``sink``, or is a repeat superseded for it (never sent, by design)."""
        return key in self.accepted[sink] or key in self.superseded[sink]

    def _notifications_from(self, start: int, end: float) -> int | None:
        notes = self.notifications
        i = start
        while i < len(notes) and notes[i][4] <= end:
            if not self.done("alerts", notes[i][1]):
                return i
            i += 1
        return None

    def unstored_since(self, since: float) -> int:
        """How many events sent after ``since`` are not stored yet (a writer backlog, roughly)."""
        with self.lock:
            i = bisect.bisect_left(self.sent, iso(since), key=lambda s: s[0])
            return sum(1 for _ts, eid in self.sent[i:] if eid not in self.stored)

    def missing(self) -> int:
        with self.lock:
            return sum(1 for _ts, eid in self.sent if eid not in self.stored)

    def finish(self, now: float) -> None:
        """At the end: read what is left, and judge every fault not judged yet as of now."""
        with self.lock:
            self._tick(now, None, None)
            self._settle(now, final=True)

    def _settle(self, now: float, final: bool = False) -> None:
        """A fault has settled once every event sent and every notification made from 2 s before it
        started until it ended is stored / delivered; at its deadline, what is still missing is its loss."""
        for f in self.faults:
            if f.ended is None or f.settled_s is not None or f.unsettled or (now < f.ended + 0.5 and not final):
                continue
            lo = iso(f.started - 2.0)
            if f.ev_ptr is None:
                f.ev_ptr = bisect.bisect_left(self.sent, lo, key=lambda s: s[0])
                f.notif_ptr = bisect.bisect_left(self.notifications, f.started - 2.0, key=lambda n: n[4])
            end_ts = iso(f.ended)
            if f.events_settled_s is None:
                first = self._events_from(f.ev_ptr, end_ts)
                if first is None:
                    f.events_settled_s = round(now - f.ended, 2)
                else:
                    f.ev_ptr = first
            if f.notifications_settled_s is None:
                first = self._notifications_from(f.notif_ptr or 0, f.ended)
                if first is None:
                    f.notifications_settled_s = round(now - f.ended, 2)
                else:
                    f.notif_ptr = first
            if f.events_settled_s is not None and f.notifications_settled_s is not None:
                f.settled_s = round(now - f.ended, 2)
                self._integrity(now)
            elif now > f.ended + self.deadline or final:
                f.unsettled = True
                f.missing_events = [eid for ts, eid in self.sent[f.ev_ptr :] if ts <= end_ts and eid not in self.stored]
                f.undelivered = [
                    key for _n, key, _a, _t, created in self.notifications[f.notif_ptr or 0 :]
                    if created <= f.ended and not self.done("alerts", key)
                ]  # fmt: skip

    def _integrity(self, now: float) -> None:
        if now - self._last_integrity < 15 or self._conn is None:
            return
        self._last_integrity = now
        with contextlib.suppress(sqlite3.Error):
            self.integrity.append((now, str(self._conn.execute("PRAGMA quick_check").fetchone()[0])))

    # -- for the end ---------------------------------------------------------------------------

    def all_stored(self) -> bool:
        return self.missing() == 0


def quarantine_text_key(raw: str) -> str:
    """The identity of a quarantined event that has no id: its element's text."""
    from xml.etree import ElementTree as ET

    with contextlib.suppress(ET.ParseError):
        return "text:" + (ET.fromstring(raw).text or "")
    return "raw:" + raw
