"""The soak itself: start everything, stream, inject the planned faults, settle, stop, check.

Everything runs on 127.0.0.1 under one work directory: a private Prosody or ejabberd
(:mod:`.servers`), the emulator (one
process per stream segment, :mod:`.emulate`), ``xmppmon run`` with its database on a tmpfs the
soak mounts, ``xmppmon sidecar`` with a webhook sink pointing at :class:`.receiver.Receiver`.
The run is bounded: the stream ends by itself, faults end before it, quiescence has a deadline,
and the whole is under an overall timeout; every process started is stopped in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from agent.events import iso
from agent.lab.servers import SERVER_KINDS, XmppServer

from . import invariants as inv
from . import servers
from .observe import FaultRun, Tracker
from .procs import Child, cut_tcp, fill, hold_write_lock, log_has, mount_tmpfs, parse_log, umount
from .receiver import Receiver
from .schedule import Fault, Plan, Segment, make_plan

ROOT = Path(__file__).resolve().parents[2]
APPS = {"demo": "demo-key", "shop": "shop-key"}
REFUSED = {"locked": 402}  # subscribed by the agent, refused by the emulator: a subscription alert
#: The agent's backlog limit in the soak: 100 s of the base rate. With the default (100,000 records)
#: a long locked database took the agent to 231 MB (seed 60), over the 200 MB the soak states.
BACKLOG_RECORDS = 40_000
ALERT_RULES = {
    cls: {"resolve_hold_seconds": 2, "quiet_seconds": 30, "repeat_seconds": 20, "flap_seconds": 10}
    for cls in ("auth", "billing", "forbidden", "client", "rate", "server", "unavailable", "timeout")
}
SINK = {
    "type": "webhook", "timeout": 2, "attempts": 3, "backoff_initial": 0.2, "backoff_max": 1.0,
    "backoff_jitter": 0.2, "park_seconds": 3, "max_retry_after": 10, "max_batch": 20,
}  # fmt: skip


@dataclass
class Options:
    seed: int
    minutes: float
    server: str = "prosody"
    rate: float = 400.0
    json_path: Path | None = None
    workdir: Path | None = None
    rss_limit_mb: float = 200.0
    rss_growth_mb: float = 32.0
    settle_deadline: float = 60.0
    quiesce_deadline: float = 120.0
    tmpfs_mb: int | None = None
    malformed: float = 0.01
    duplicates: float = 0.02
    quiet: bool = False
    flood: int = 0
    only: frozenset[str] | None = None
    archive: str = "sql"


def say(opts: Options, text: str) -> None:
    if not opts.quiet:
        print(text, file=sys.stderr, flush=True)


class Stream:
    """Runs the plan's segments back to back, one emulator process each, pausable."""

    def __init__(self, soak: Soak, segments: list[Segment]) -> None:
        self.soak = soak
        self.segments = segments
        self.may_stream = asyncio.Event()
        self.may_stream.set()
        self.current: Child | None = None
        self.processes: list[Child] = []
        self.stopping = False
        self.flood_done = asyncio.Event()
        self._n = 0

    def argv(self, seg: Segment, duration: float, seed: int) -> list[str]:
        s = self.soak
        argv = [
            sys.executable, "-m", "bench.chaos.emulate", "--record", str(s.record), "--event-log", str(s.event_log),
            "--port", str(s.server.component_port), "--jid", s.server.component, "--to", s.account[0],
            "--rate", str(seg.rate), "--batch", str(seg.batch), "--duration", f"{duration:.2f}",
            "--malformed", str(s.opts.malformed), "--duplicates", str(s.opts.duplicates), "--seed", str(seed),
        ]  # fmt: skip
        for app, key in APPS.items():
            argv += ["--app", f"{app}:{key}"]
        for app, code in REFUSED.items():
            argv += ["--refuse", f"{app}={code}"]
        if seg.api_status is not None:
            argv += ["--api-status", str(seg.api_status)]
        if seg.mode == "flood":
            argv += ["--count", str(self.soak.plan.flood)]
        return argv

    async def run(self) -> None:
        s = self.soak
        for seg in self.segments:
            end = s.t0 + seg.at + seg.duration
            while not self.stopping and time.time() < end - 1.0:
                await self.may_stream.wait()
                if not self.may_stream.is_set():
                    continue  # paused again between the wake-up and now
                if self.stopping or time.time() > end - 1.0:
                    break
                self._n += 1
                seed = s.opts.seed * 1_000_003 + self._n
                env = dict(s.base_env, XMPPMON_EMULATOR_SECRET=s.server.component_secret,
                           PYTHONPATH=str(ROOT))  # fmt: skip
                child = Child(f"emulator-{self._n:03d}", self.argv(seg, end - time.time(), seed), env, s.logs)
                self.processes.append(child)
                child.start()
                self.current = child
                while child.proc is not None and child.proc.poll() is None:
                    await asyncio.sleep(0.2)
                child.check()
                self.current = None
                if seg.mode == "flood" and self.may_stream.is_set():
                    self.flood_done.set()
                if self.may_stream.is_set():
                    break  # ended by itself (or failed): next segment; paused: the rest of this one later

    async def pause(self, timeout: float = 200.0) -> None:
        """Stop streaming cleanly: the current emulator drains to the server and leaves (SIGTERM)."""
        self.may_stream.clear()
        child = self.current
        if child is not None:
            # Its SIGTERM handler is set once it runs its loop: before that, SIGTERM would kill it.
            deadline = time.monotonic() + 30
            while child.alive() and not log_has(child.log_path, "connected to") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if child is not None and child.proc is not None and child.proc.poll() is None:
            child.proc.terminate()
        deadline = time.monotonic() + timeout
        while self.current is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.current is not None:
            self.current.close()  # did not drain in time: what it had sent may be lost (reported)

    def resume(self) -> None:
        self.may_stream.set()


@dataclass
class Soak:
    opts: Options
    plan: Plan
    work: Path
    t0: float = 0.0
    server: XmppServer = field(init=False)
    account: tuple[str, str] = ("", "")
    receiver: Receiver = field(default_factory=Receiver)
    base_env: dict[str, str] = field(default_factory=dict)
    faults: list[FaultRun] = field(default_factory=list)
    late: tuple[float, int] | None = None
    late_synced: float | None = None  # when the sidecar first synced the sink 'late' (its log line)
    final: dict[str, Any] = field(default_factory=dict)
    harness_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.disk = self.work / "disk"
        self.db = self.disk / "monitor.db"
        self.record = self.work / "sent.jsonl"
        self.event_log = self.work / "events.log"
        self.filler: Path | None = None
        self.base_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("XMPPMON_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        self.sinks = [dict(SINK, name="alerts", url=self.receiver.url("alerts"))]

    # -- the processes -------------------------------------------------------------------------

    def agent_env(self) -> dict[str, str]:
        server = self.server
        apps = [{"app": a, "key": k} for a, k in (APPS | {app: "locked-key" for app in REFUSED}).items()]
        env = dict(self.base_env)
        env.update({
            "XMPPMON_XMPP__JID": self.account[0], "XMPPMON_XMPP__PASSWORD": self.account[1],
            "XMPPMON_XMPP__HOST": "127.0.0.1", "XMPPMON_XMPP__PORT": str(server.c2s_port),
            "XMPPMON_XMPP__CA_FILE": str(server.ca_file), "XMPPMON_XMPP__NEGOTIATION_TIMEOUT": "5",
            "XMPPMON_MONITOR__JID": server.component, "XMPPMON_MONITOR__APPS": json.dumps(apps),
            "XMPPMON_KEEPALIVE__INTERVAL": "2", "XMPPMON_KEEPALIVE__TIMEOUT": "3",
            "XMPPMON_RECONNECT__INITIAL": "0.2", "XMPPMON_RECONNECT__MAXIMUM": "2",
            "XMPPMON_STORE__PATH": str(self.db), "XMPPMON_STORE__HEARTBEAT_SECONDS": "1",
            "XMPPMON_STORE__BUSY_TIMEOUT_MS": "1000", "XMPPMON_STORE__STALL_SECONDS": "30",
            # The RSS bound (Options.rss_limit_mb) is for this backlog: ~1.5 KB of RSS a record.
            "XMPPMON_STORE__MAX_BACKLOG_RECORDS": str(BACKLOG_RECORDS),
            "XMPPMON_ALERTS__SWEEP_SECONDS": "1", "XMPPMON_ALERTS__DISCONNECTED_AFTER_SECONDS": "6",
            "XMPPMON_ALERTS__RULES": json.dumps(ALERT_RULES),
            "XMPPMON_LOG__JSON": "true", "XMPPMON_LOG__LEVEL": "INFO",
        })  # fmt: skip
        return env

    def sidecar_env(self) -> dict[str, str]:
        env = dict(self.base_env)
        env.update({
            "XMPPMON_STORE__PATH": str(self.db), "XMPPMON_SIDECAR__SINKS": json.dumps(self.sinks),
            "XMPPMON_SIDECAR__POLL_SECONDS": "0.5", "XMPPMON_SIDECAR__AGENT_DOWN_AFTER": "8",
            "XMPPMON_ALERTS__SWEEP_SECONDS": "1", "XMPPMON_LOG__JSON": "true", "XMPPMON_LOG__LEVEL": "INFO",
        })  # fmt: skip
        return env

    def tmpfs_size(self) -> int:
        if self.opts.tmpfs_mb:
            return self.opts.tmpfs_mb
        events = sum(seg.rate * seg.duration for seg in self.plan.segments) + self.plan.flood
        return int(events * 800 / 2**20) + 64

    async def supervise(self, children: list[Child], want: dict[str, bool], stop: asyncio.Event) -> None:
        """Restart a child that died on its own (as systemd's Restart=on-failure would, but after 1 s)."""
        while not stop.is_set():
            for child in children:
                if want[child.name] and child.proc is not None and child.proc.poll() is not None:
                    e = child.check()
                    if e is not None:
                        say(self.opts, f"  !! {child.name} exited on its own (rc {e.rc}); restarting")
                        await asyncio.sleep(1.0)
                        if want[child.name] and not child.alive():
                            child.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    # -- faults --------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(step)
        return predicate()

    def counter(self, name: str) -> int:
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)
            try:
                row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return -1
        return int(row[0]) if row else 0

    async def inject(self, fault: Fault, run: FaultRun) -> None:
        agent, sidecar, server, want = self.agent, self.sidecar, self.server, self.want
        kind, d = fault.kind, fault.duration
        if kind == "agent_kill":
            want["agent"] = False
            agent.kill9()
            await asyncio.sleep(d)
            agent.start()
            want["agent"] = True
        elif kind == "agent_kill_catchup":
            want["agent"] = False
            agent.kill9()
            await asyncio.sleep(d)
            mam_before = self.counter("events_via_mam")
            agent.start()
            new = await self.wait_for(lambda: log_has(agent.log_path, "session started as"), 20)
            if not new:
                run.landed = False
                run.notes.append("no new session within 20 s (stream resumed?)")
            else:
                # Kill once the catch-up has committed a first archived event, unless it is over.
                progressed = await self.wait_for(
                    lambda: (
                        log_has(agent.log_path, "archive replayed after") or self.counter("events_via_mam") > mam_before
                    ),
                    20,
                )
                await asyncio.sleep(min(fault.params.get("kill_after_session_s", 0.0), 1.5) / 5)
                over = log_has(agent.log_path, "archive replayed after")
                run.landed = progressed and not over
                run.notes.append(
                    "killed during the catch-up" if run.landed else "the catch-up was over before the kill"
                )
                agent.kill9()
                mam_id, via_mam = self.agent_state("mam_last_id"), self.counter("events_via_mam") - mam_before
                run.notes.append(f"at the kill: mam_last_id {mam_id}, {via_mam} event(s) from the archive so far")
                await asyncio.sleep(0.3)
                agent.start()
            want["agent"] = True
        elif kind == "agent_kill_backlog":
            # Inside a disk fault: wait (until that fault is about to end) for the writer to fail, so
            # the kill lands while it holds a backlog; a WAL with room left can delay the failure.
            within = next(
                (f for f in self.faults if f.lane == "disk" and f.started and f.ended is None and f.n != fault.n), None
            )
            planned = next((p for p in self.plan.faults if within and p.n == within.n), None)
            until = (self.t0 + planned.at + planned.duration - 0.5) if planned else time.time() + 2.0
            since = within.started if within else time.time()
            await self.wait_for(
                lambda: log_has(agent.log_path, "cannot commit") and self.tracker.unstored_since(since) > 0,
                max(0.5, until - time.time()),
                0.2,
            )
            failing = log_has(agent.log_path, "cannot commit")
            backlog = self.tracker.unstored_since(since) if within else 0
            run.landed = bool(within) and failing and backlog > 0
            run.notes.append(
                f"during {within.kind if within else 'no disk fault'}; writer failing: {failing};"
                f" events sent since the disk fault began and not stored: {backlog}"
            )
            want["agent"] = False
            agent.kill9()
            await asyncio.sleep(d)
            agent.start()
            want["agent"] = True
        elif kind == "sidecar_kill":
            want["sidecar"] = False
            sidecar.kill9()
            self.sidecar_kills.append(time.time())
            await asyncio.sleep(d)
            sidecar.start()
            want["sidecar"] = True
        elif kind == "sidecar_new_sink":
            want["sidecar"] = False
            rc = await asyncio.to_thread(sidecar.terminate, 30.0)
            self.sinks.append(dict(SINK, name="late", url=self.receiver.url("late")))
            sidecar.env = self.sidecar_env()
            top = self.max_notification()
            self.late = (time.time(), top)
            sidecar.start()
            want["sidecar"] = True
            run.notes.append(f"old sidecar exited {rc}; sink 'late' added after notification {top}")
        elif kind == "server_freeze":
            server.freeze()
            await asyncio.sleep(d)
            server.thaw()
        elif kind == "server_kill":
            await self.stream.pause()  # nothing in flight: a server killed mid-stanza loses it (docs)
            await asyncio.sleep(0.5)
            server.kill()
            self.keep_server_log()
            await asyncio.sleep(d)
            await asyncio.to_thread(server.start)
            self.stream.resume()
        elif kind == "tcp_cut":
            cut = await asyncio.to_thread(cut_tcp, server.c2s_port)
            run.notes.append(f"{cut} connection(s) cut")
        elif kind == "disk_full":
            self.filler, size = await asyncio.to_thread(fill, self.disk)
            run.notes.append(f"filler {size // 2**20} MB")
            await asyncio.sleep(d)
            self.filler.unlink()
            self.filler = None
        elif kind == "disk_full_flood":
            self.filler, size = await asyncio.to_thread(fill, self.disk)
            started = time.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stream.flood_done.wait(), max(1.0, d - 5.0))
            flooded = time.time() - started
            await asyncio.sleep(max(0.0, min(5.0, d - flooded)))
            run.notes.append(
                f"filler {size // 2**20} MB; flood of {self.plan.flood} events over {flooded:.0f} s;"
                f" agent RSS then {rss // 1024 if (rss := self.agent.rss_kb()) else '(not running)'} MB"
            )
            self.filler.unlink()
            self.filler = None
        elif kind == "db_lock":
            run.notes.append(await asyncio.to_thread(hold_write_lock, self.db, d))
        elif kind.startswith("webhook_"):
            self.receiver.set_mode(kind.removeprefix("webhook_"))
            await asyncio.sleep(d)
            self.receiver.set_mode("ok")
        else:
            raise ValueError(f"unknown fault {kind}")

    def keep_server_log(self) -> None:
        """The server's logs are truncated at each start: keep each run's copy in the logs folder."""
        self.server_starts = getattr(self, "server_starts", 0) + 1
        for src, name in servers.logs(self.server):
            with contextlib.suppress(OSError):
                (self.logs / f"{name}.{self.server_starts}.log").write_bytes(src.read_bytes())

    def max_notification(self) -> int:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM notifications").fetchone()[0])
        finally:
            conn.close()

    async def lane(self, faults: list[Fault]) -> None:
        for fault in faults:
            run = next(r for r in self.faults if r.n == fault.n)
            delay = self.t0 + fault.at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            run.started = time.time()
            say(self.opts, f"  {run.started - self.t0:6.1f}s fault #{fault.n} {fault.kind} ({fault.duration:.1f} s)")
            try:
                await self.inject(fault, run)
            except Exception as exc:  # the harness failed to inject: say so, carry on
                run.error = f"{type(exc).__name__}: {exc}"
                self.harness_errors.append(f"fault #{fault.n} {fault.kind}: {run.error}")
                say(self.opts, f"  !! fault #{fault.n} {fault.kind} failed: {run.error}")
                self.want["agent"] = self.want["sidecar"] = True
            run.ended = time.time()

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.time()
            await asyncio.to_thread(self.tracker.tick, now, self.agent.pid, self.agent.rss_kb())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> None:
        opts, plan = self.opts, self.plan
        self.server = servers.build(opts.server, self.work, opts.archive)
        mount_tmpfs(self.disk, self.tmpfs_size())
        self.mounted = True
        await asyncio.to_thread(self.server.start)
        self.account = (self.server.register("soak", "soak-secret-pw"), "soak-secret-pw")
        self.receiver.start()
        self.sinks = [dict(SINK, name="alerts", url=self.receiver.url("alerts"))]
        self.agent = Child("agent", [sys.executable, "-m", "agent", "run"], self.agent_env(), self.logs)
        self.sidecar = Child("sidecar", [sys.executable, "-m", "agent", "sidecar"], self.sidecar_env(), self.logs)
        self.want = {"agent": True, "sidecar": True}
        self.sidecar_kills: list[float] = []
        self.tracker = Tracker(self.db, self.record, self.receiver, deadline=opts.settle_deadline, faults=self.faults)
        self.agent.start()
        if not await self.wait_for(lambda: self.agent_state("session").startswith("connected"), 30, 0.2):
            raise RuntimeError(f"the agent did not connect within 30 s; see {self.agent.log_path}")
        self.sidecar.start()
        self.stream = Stream(self, plan.segments)
        self.t0 = time.time()
        for f in plan.faults:
            self.faults.append(FaultRun(f.n, f.kind, f.lane, f.at))
        say(
            opts,
            f"soak seed {opts.seed}: {plan.stream_seconds:.0f} s stream, {len(plan.faults)} faults, work dir {self.work}",
        )
        stop = asyncio.Event()
        background = [
            asyncio.ensure_future(self.supervise([self.agent, self.sidecar], self.want, stop)),
            asyncio.ensure_future(self.watch(stop)),
        ]
        lanes = {}
        for f in plan.faults:
            lanes.setdefault(f.lane, []).append(f)
        lane_tasks = [asyncio.ensure_future(self.lane(faults)) for faults in lanes.values()]
        try:
            await self.stream.run()
            _done, pending = await asyncio.wait(lane_tasks, timeout=90) if lane_tasks else (set(), set())
            for task in pending:
                task.cancel()
                self.harness_errors.append("a fault lane overran the stream by 90 s and was cancelled")
            await self.restore()
            say(opts, f"  {time.time() - self.t0:6.1f}s stream over; waiting for quiescence")
            self.final["quiescence"] = await self.quiesce()
            say(opts, f"  {time.time() - self.t0:6.1f}s {self.final['quiescence']}; stopping the agent and the sidecar")
            self.want["agent"] = False
            self.final["agent_rc"] = await asyncio.to_thread(self.agent.terminate, 30.0)
            await self.wait_for(lambda: self.delivered_all(), 20, 0.5)
            await asyncio.to_thread(self.tracker.tick, time.time(), None, None)
            self.want["sidecar"] = False
            self.final["sidecar_rc"] = await asyncio.to_thread(self.sidecar.terminate, 30.0)
        finally:
            stop.set()
            for task in (*lane_tasks, *background):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*lane_tasks, *background, return_exceptions=True)
        await asyncio.to_thread(self.tracker.finish, time.time())

    async def restore(self) -> None:
        """After the lanes: undo whatever a cancelled fault left (receiver mode, frozen server, filler)."""
        self.receiver.set_mode("ok")
        if self.server.frozen:
            self.server.thaw()
        if not self.server.running:
            await asyncio.to_thread(self.server.start)
        if self.filler is not None:
            self.filler.unlink(missing_ok=True)
        self.want["agent"] = self.want["sidecar"] = True
        for child in (self.agent, self.sidecar):
            if not child.alive():
                child.check()
                child.start()

    def agent_state(self, key: str) -> str:
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)
            try:
                row = conn.execute("SELECT value FROM agent_state WHERE key = ?", (key,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return ""
        return str(row[0]) if row and row[0] is not None else ""

    def delivered_all(self) -> bool:
        t = self.tracker
        top = self.late_top()
        for nid, key, *_ in t.notifications:
            if not t.done("alerts", key):
                return False
            if self.late is not None and nid > top and not t.done("late", key):
                return False
        return True

    def late_top(self, db: Path | None = None) -> int:
        """The newest notification the sink 'late' treats as history (0: no such sink).

        The harness notes the newest notification when it adds the sink, but the new sidecar takes
        its starting point later, when it first syncs the outbox (logged as "sink late is new"):
        a notification made in between is history too, and if its alert was resolved by then the
        sink never gets it (docs/alerts.md). So: the newest notification made before that log line
        that the sink has no delivery row for, if newer than the harness's note. Notifications made
        after the line are never history, so a missing row for one still fails the delivery check.
        """
        if self.late is None:
            return 0
        added_at, top = self.late
        if self.late_synced is None:
            self.late_synced = next(
                (
                    t
                    for t, _level, m in timeline(self.logs, "sidecar")
                    if t >= added_at and m.startswith("sink late is new")
                ),
                None,
            )
        if self.late_synced is None:
            return top
        try:
            conn = sqlite3.connect(f"file:{db or self.db}?mode=ro", uri=True, timeout=2)
            try:
                row = conn.execute(
                    "SELECT max(id) FROM notifications n WHERE id > ? AND created_at <= ? AND NOT EXISTS"
                    " (SELECT 1 FROM delivery_state d WHERE d.sink = 'late' AND d.notification_id = n.id)",
                    (top, iso(self.late_synced)),
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return top
        return max(top, int(row[0])) if row and row[0] is not None else top

    async def quiesce(self) -> str:
        """Wait until every sent event is stored and every notification delivered; or stalled; or the deadline."""
        deadline = time.time() + self.opts.quiesce_deadline
        while True:
            await asyncio.sleep(1.0)
            t = self.tracker
            if t.all_stored() and self.delivered_all() and self.stream_done():
                return "quiescent"
            idle = time.time() - t.last_progress
            if idle > 30 and self.delivered_all() and self.stream_done():
                return f"stalled: every notification delivered, but no new event row for {idle:.0f} s"
            if time.time() > deadline:
                return f"quiescence deadline ({self.opts.quiesce_deadline:.0f} s) passed"

    def stream_done(self) -> bool:
        return self.stream.current is None

    # -- after the run -------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Stop everything we started (by PID), give the disk back; for the ``finally``.

        Each step is on its own, so that one failing cannot leave a process or the mount behind.
        """
        steps: list[Callable[[], object]] = []
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            steps.append(tracker.close)
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.stopping = True
            steps += [child.close for child in stream.processes]
        steps += [child.close for child in (getattr(self, "agent", None), getattr(self, "sidecar", None)) if child]
        steps.append(self.receiver.stop)
        server = getattr(self, "server", None)
        if server is not None:
            steps += [server.stop, self.keep_server_log]
        for step in steps:
            try:
                step()
            except Exception as exc:
                self.harness_errors.append(f"cleanup: {type(exc).__name__}: {exc}")
        if self.filler is not None:
            self.filler.unlink(missing_ok=True)
        if getattr(self, "mounted", False):
            if self.db.exists():
                try:
                    self.final["integrity"] = copy_database(self.db, self.work / "monitor.db")
                except sqlite3.Error as exc:
                    self.harness_errors.append(f"cannot copy the database off the tmpfs: {exc}")
            umount(self.disk)
            self.mounted = False


# -- reading everything back -------------------------------------------------------------------


def copy_database(db: Path, dest: Path) -> str:
    """``PRAGMA integrity_check`` of ``db``, then a consistent copy of it at ``dest`` (backup API)."""
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        integrity = "\n".join(str(r[0]) for r in src.execute("PRAGMA integrity_check").fetchall())
        dest.unlink(missing_ok=True)
        out = sqlite3.connect(dest)
        try:
            src.backup(out)
        finally:
            out.close()
    finally:
        src.close()
    return integrity


def timeline(logdir: Path, name: str) -> list[tuple[float, str, str]]:
    """Every JSON log line of every start of ``name`` as (epoch, level, message), in time order."""
    from datetime import datetime

    out = []
    for path in sorted(logdir.glob(f"{name}.*.log"), key=lambda p: int(p.name.split(".")[1])):
        for obj in parse_log(path):
            ts = obj.get("ts")
            if isinstance(ts, str):
                with contextlib.suppress(ValueError):
                    out.append((datetime.fromisoformat(ts).timestamp(), str(obj.get("level")), str(obj.get("message"))))
    out.sort(key=lambda x: x[0])
    return out


#: What the agent's log tells about a run (counted for the summary).
NOTABLE = {
    "new sessions": "session started as",
    "sessions with an empty JID": "session started as $",
    "streams resumed": "resumed at h=",
    "catch-ups finished": "archive replayed after",
    "ping timeouts": "no answer to ping",
    "writer failures": "cannot commit",
    "reads paused": "pausing reads",
    "stanza handler errors": "Error handling",
}


def notable(lines: list[tuple[float, str, str]]) -> dict[str, Any]:
    counts = {}
    for label, pattern in NOTABLE.items():
        if pattern.endswith("$"):
            counts[label] = sum(1 for _t, _l, m in lines if m == pattern[:-1])
        else:
            counts[label] = sum(1 for _t, _l, m in lines if pattern in m)
    errors = Counter(m[:120] for _t, level, m in lines if level in ("ERROR", "CRITICAL") and "cannot commit" not in m)
    return {"counts": counts, "errors": dict(errors.most_common(8))}


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def read_event_log(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
    return out


def annotate(text: str, when: dict[str, float], t0: float) -> str:
    """Add to each archive id named after 'after id ' or 'mam_last_id ' when the server archived it."""

    def one(m: re.Match[str]) -> str:
        t = when.get(m.group(2))
        return m.group(0) if t is None else f"{m.group(0)} [archived at {t - t0:.0f}s]"

    return re.sub(r"(after id |mam_last_id )([A-Za-z0-9_-]{8,})", one, text)


def db_snapshot(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        q = conn.execute
        stored: Counter[str] = Counter()
        for table in ("events", "api_calls"):
            stored.update(r[0] for r in q(f"SELECT event_id FROM {table}"))
        state: dict[tuple[str, ...], tuple[str, str, Any]] = {}
        for app, dev, ts, eid, payload in q("SELECT app, device_id, ts, event_id, payload FROM devices"):
            state[("device", app, dev)] = (ts, eid, payload)
        for app, dev, name, value, ts, eid in q("SELECT app, device_id, name, value, ts, event_id FROM tags"):
            state[("tag", app, dev, name)] = (ts, eid, value)
        for app, dev, token, valid, ts, eid in q("SELECT app, device_id, token, valid, ts, event_id FROM tokens"):
            state[("token", app, dev)] = (ts, eid, (token, valid))
        for app, dev, camp, action, ts, eid in q(
            "SELECT app, device_id, campaign_id, action, ts, event_id FROM push_feedback"
        ):
            state[("push", app, dev, camp)] = (ts, eid, action)
        quarantine = list(q("SELECT event_id, raw, received_at FROM quarantine"))
        identity = {
            r[0]: f"{r[1]}/{r[2] or '-'}/{r[3]}/{r[4] or '-'}"
            for r in q("SELECT id, source, app, code, api FROM alerts")
        }
        notifications = [
            inv.Notification(r[0], r[1], r[2], r[3], _epoch(r[4]), identity.get(r[2], "?"))
            for r in q("SELECT id, key, alert_id, transition, created_at FROM notifications ORDER BY id")
        ]
        states: dict[str, dict[int, tuple[str, int, str | None]]] = {}
        for sink, nid, st, attempts, reason in q(
            "SELECT sink, notification_id, state, attempts, reason FROM delivery_state"
        ):
            states.setdefault(sink, {})[nid] = (st, attempts, reason)
        counters = dict(q("SELECT name, value FROM counters").fetchall())
    finally:
        conn.close()
    return {"stored": stored, "state": state, "quarantine": quarantine, "notifications": notifications,
            "delivery_state": states, "counters": counters}  # fmt: skip


def _epoch(text: str) -> float:
    from agent.events import epoch

    return epoch(text)


def evaluate(soak: Soak) -> dict[str, Any]:
    """Every invariant on what the run left behind; the summary the report and the JSON show."""
    t0 = soak.t0
    db = soak.work / "monitor.db"
    snap = db_snapshot(db)
    records = read_records(soak.record)
    official = read_event_log(soak.event_log)
    spans = [inv.Span(f.n, f.kind, f.started, f.ended or f.started, f.landed) for f in soak.faults if f.started]
    valid = [r for r in records if r["t"] == "V"]
    sent_ts = {r["id"]: r["ts"] for r in valid}
    expected = {i for i, kind, _app in official if kind in inv.COUNTED_KINDS}
    checks: list[inv.Check] = []
    inspected = servers.archive_inspected(soak.server)
    archived = servers.archived_ids(soak.server) if inspected else None
    soak.final["archive"] = (
        f"{soak.opts.server}'s archive inspected: {len(archived)} event ids in it"
        if archived is not None
        else f"archive not inspected: no archive of {soak.opts.server} to read (lost events are not looked up in it)"
    )
    agent_log = timeline(soak.logs, "agent")
    when = servers.archive_times(soak.server)
    log = [(t, annotate(m, when, t0)) for t, _level, m in agent_log]
    for f in soak.faults:
        f.notes = [annotate(n, when, t0) for n in f.notes]
    checks.append(inv.check_events(expected, snap["stored"], sent_ts, spans, t0, archived, log))
    checks.append(inv.check_state([r for r in valid if "p" in r], snap["state"], t0))
    checks.append(inv.check_quarantine([r for r in records if r["t"] == "M"], snap["quarantine"], spans, t0, log))
    accepted = [inv.Accepted(d.t, d.sink, d.key) for d in soak.receiver.deliveries]
    kills = sorted([*soak.sidecar_kills, *(e.t for e in soak.sidecar.exits if not e.expected)])
    notes = snap["notifications"]
    checks.append(inv.check_delivery(notes, accepted, "alerts", kills, snap["delivery_state"].get("alerts", {}), t0))
    checks.append(inv.check_order(notes, accepted, "alerts", spans, t0))
    if soak.late is not None:
        top = soak.late_top(db)
        if top != soak.late[1]:
            for f in soak.faults:
                if f.kind == "sidecar_new_sink":
                    f.notes.append(
                        f"the sidecar took the sink's start at its first sync: history up to notification {top}"
                    )
        checks.append(
            inv.check_delivery(notes, accepted, "late", kills, snap["delivery_state"].get("late", {}), t0, top)
        )
        checks.append(inv.check_order(notes, accepted, "late", spans, t0))
        checks.append(inv.check_new_sink(notes, accepted, "late", top, t0))
    settled = [f for f in soak.faults if f.ended]
    first = settled[0] if settled else None
    last = max(settled, key=lambda f: f.ended or 0) if settled else None

    def settle_time(f: FaultRun | None) -> float | None:
        return None if f is None or f.ended is None else f.ended + (f.settled_s or 0.0)

    checks.append(inv.check_rss(soak.tracker.rss, settle_time(first), settle_time(last), soak.opts.rss_limit_mb,
                                soak.opts.rss_growth_mb, t0))  # fmt: skip
    checks.append(inv.check_integrity(soak.final.get("integrity", "not checked"), soak.tracker.integrity, t0))
    checks.append(process_check(soak))
    checks.append(harness_check(soak, official, valid))
    return {"checks": checks, "snapshot": snap, "records": len(records), "agent_log": notable(agent_log),
            "sidecar_log": notable(timeline(soak.logs, "sidecar"))["errors"]}  # fmt: skip


def process_check(soak: Soak) -> inv.Check:
    """Agent and sidecar exit only when told, and exit 0 on SIGTERM; emulators end cleanly."""
    evidence = []
    unexpected = []
    for child in (soak.agent, soak.sidecar):
        for e in child.exits:
            if not e.expected:
                unexpected.append(e)
                tail = [str(x.get("message", ""))[:160] for x in parse_log(Path(e.log))[-3:]]
                evidence.append(
                    f"{child.name} pid {e.pid} exited on its own at {e.t - soak.t0:.1f}s rc {e.rc}: {' | '.join(tail)}"
                )
    emulators = [e for c in soak.stream.processes for e in c.exits if e.rc not in (0, None) and not e.expected]
    for e in emulators[:3]:
        tail = [str(x.get("message", ""))[:160] for x in parse_log(Path(e.log))[-2:]]
        evidence.append(f"emulator pid {e.pid} failed at {e.t - soak.t0:.1f}s rc {e.rc}: {' | '.join(tail)}")
    rcs = {"agent_rc": soak.final.get("agent_rc"), "sidecar_rc": soak.final.get("sidecar_rc")}
    for name, rc in rcs.items():
        if rc != 0:
            evidence.append(f"{name.removesuffix('_rc')} exited {rc} on SIGTERM at the end")
    ok = not unexpected and not emulators and all(rc == 0 for rc in rcs.values())
    numbers = {"unexpected_exits": len(unexpected), "emulator_failures": len(emulators), **rcs,
               "agent_starts": soak.agent.starts, "sidecar_starts": soak.sidecar.starts}  # fmt: skip
    return inv.Check("processes exit only when told, cleanly", ok, numbers, evidence)


def harness_check(soak: Soak, official: list[tuple[str, str, str]], valid: list[dict[str, Any]]) -> inv.Check:
    """The soak itself worked: its record agrees with the emulator's log, faults were injected."""
    official_ids = {i for i, _k, _a in official}
    recorded = {r["id"] for r in valid}
    evidence = list(soak.harness_errors)
    if official_ids != recorded:
        evidence.append(f"emulator log and record disagree: {len(official_ids - recorded)} only in the log,"
                        f" {len(recorded - official_ids)} only in the record")  # fmt: skip
    quiet = soak.final.get("quiescence", "?")
    numbers = {"faults_injected": sum(1 for f in soak.faults if f.started and not f.error),
               "fault_errors": sum(1 for f in soak.faults if f.error), "log_vs_record": "same" if official_ids == recorded else "differ",
               "end": quiet}  # fmt: skip
    ok = not evidence
    return inv.Check("harness", ok, numbers, evidence)


async def soak_main(opts: Options) -> tuple[Soak, dict[str, Any] | None]:
    if opts.server not in SERVER_KINDS:
        raise SystemExit(f"--server {opts.server}: choose one of {', '.join(SERVER_KINDS)}")
    if os.geteuid() != 0:
        raise SystemExit("the soak mounts a tmpfs and cuts TCP connections: run it as root")
    plan = make_plan(opts.seed, opts.minutes, opts.rate, opts.flood, opts.only)
    work = opts.workdir or Path(tempfile.mkdtemp(prefix=f"xmppmon-soak-{opts.seed}-"))
    work.mkdir(parents=True, exist_ok=True)
    soak = Soak(opts, plan, work)
    budget = plan.stream_seconds + opts.quiesce_deadline + 240
    task = asyncio.ensure_future(asyncio.wait_for(soak.run(), budget))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop, and still clean up, when told to
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except TimeoutError:
        soak.harness_errors.append(f"the soak overran its {budget:.0f} s budget and was stopped")
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None  # after the finally's cleanup
    except Exception as exc:
        soak.harness_errors.append(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        soak.cleanup()
    return soak, evaluate(soak)
