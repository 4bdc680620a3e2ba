"""The soak's plan, fixed by the seed: what the emulator streams when, and which fault starts when.

Everything random in a soak run is drawn here, from one ``random.Random(seed)``, in a fixed order,
before anything starts; the run only follows the plan. Faults live in *lanes*: faults of one lane
never overlap (one webhook mode at a time, the server is frozen or killed but not both), faults of
different lanes overlap freely. Each lane deals its kinds from a shuffled deck, so every kind comes
up before any comes up twice.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

#: lane -> the kinds it deals (agent_kill_backlog and sidecar_new_sink are placed separately).
LANES: dict[str, tuple[str, ...]] = {
    "agent": ("agent_kill", "agent_kill_catchup"),
    "sidecar": ("sidecar_kill",),
    "server": ("server_freeze", "server_kill"),
    "network": ("tcp_cut",),
    "disk": ("disk_full", "db_lock"),
    "webhook": ("webhook_500", "webhook_429", "webhook_207", "webhook_413", "webhook_hang", "webhook_down"),
}
#: Every fault kind, in the order the report lists them.
KINDS: tuple[str, ...] = (
    "agent_kill", "agent_kill_catchup", "agent_kill_backlog", "sidecar_kill", "sidecar_new_sink",
    "server_freeze", "server_kill", "tcp_cut", "disk_full", "db_lock",
    "webhook_500", "webhook_429", "webhook_207", "webhook_413", "webhook_hang", "webhook_down",
    "disk_full_flood",
)  # fmt: skip
#: Seconds a fault of each kind lasts (down time, freeze, hold, mode), drawn uniformly.
DURATIONS: dict[str, tuple[float, float]] = {
    "agent_kill": (0.0, 4.0),
    "agent_kill_catchup": (6.0, 14.0),  # down long enough to overflow the server's queue
    "agent_kill_backlog": (0.0, 2.0),
    "sidecar_kill": (0.0, 4.0),
    "sidecar_new_sink": (0.0, 0.0),
    "server_freeze": (2.0, 10.0),
    "server_kill": (0.5, 3.0),
    "tcp_cut": (0.0, 0.0),
    "disk_full": (4.0, 10.0),
    "db_lock": (2.0, 6.0),
    **{kind: (4.0, 12.0) for kind in LANES["webhook"]},
    "disk_full_flood": (0.0, 0.0),  # set by add_flood
}
#: Seconds of wall time a kind may take beyond its duration (restarts, waiting for a catch-up).
OVERHEAD: dict[str, float] = {"agent_kill_catchup": 8.0, "server_kill": 4.0, "sidecar_new_sink": 3.0}
#: Seconds between two faults of one lane.
GAPS: dict[str, tuple[float, float]] = {"agent": (2.0, 8.0), "network": (5.0, 15.0), "sidecar": (8.0, 20.0)}
DEFAULT_GAP = (4.0, 14.0)
#: The server faults' names before the soak ran on ejabberd too; ``--only`` still takes them. The
#: rename changed no draw: a seed's plan is the one it was (tests/test_soak.py pins seeds 8 and 60).
OLD_NAMES = {"prosody_freeze": "server_freeze", "prosody_kill": "server_kill"}
WARMUP = 8.0  # seconds of clean streaming before the first fault
TAIL = 10.0  # seconds of clean streaming after the last fault ends


@dataclass(frozen=True)
class Segment:
    """One emulator run: ``duration`` seconds from ``at`` (seconds after the soak's start)."""

    at: float
    duration: float
    mode: str  # mixed (realistic status mix), calm (every api call 200), burst (mixed, faster), flood
    rate: float
    batch: int

    @property
    def api_status(self) -> int | None:
        return 200 if self.mode == "calm" else None


@dataclass(frozen=True)
class Fault:
    n: int
    kind: str
    lane: str
    at: float  # seconds after the soak's start
    duration: float
    params: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    seed: int
    stream_seconds: float
    segments: list[Segment]
    faults: list[Fault]
    flood: int = 0  # events of the flood segment (0: none)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for fault in self.faults:
            out[fault.kind] += 1
        return out


def _u(rng: random.Random, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return round(low + (high - low) * rng.random(), 2)


def stream_plan(rng: random.Random, seconds: float, rate: float) -> list[Segment]:
    """Sustained streaming with bursts: mixed, burst, mixed, calm, repeated until ``seconds``.

    Calm segments (every api call succeeds) let the alerts that mixed segments fire resolve.
    """
    pattern = (("mixed", (8.0, 16.0)), ("burst", (3.0, 6.0)), ("mixed", (5.0, 10.0)), ("calm", (8.0, 14.0)))
    segments: list[Segment] = []
    t, i = 0.0, 0
    while t < seconds - 1.0:
        mode, bounds = pattern[i % len(pattern)]
        duration = min(_u(rng, bounds), seconds - t)
        fast = mode == "burst"
        segments.append(Segment(round(t, 2), round(duration, 2), mode, rate * (5 if fast else 1), 25 if fast else 10))
        t += duration
        i += 1
    return segments


def _lane(rng: random.Random, lane: str, end: float, reserved: list[tuple[float, float]]) -> list[Fault]:
    """One lane's faults from WARMUP to ``end``, dealt from a shuffled deck, avoiding ``reserved``."""
    out: list[Fault] = []
    deck: list[str] = []
    t = WARMUP + _u(rng, (0.0, 4.0))
    while True:
        if not deck:
            deck = list(LANES[lane])
            rng.shuffle(deck)
        kind = deck[-1]
        duration = _u(rng, DURATIONS[kind])
        params: dict[str, float] = {}
        if kind == "agent_kill_catchup":
            params["kill_after_session_s"] = _u(rng, (0.2, 1.5))
        busy = duration + OVERHEAD.get(kind, 0.0)
        clash = [r_end for r_start, r_end in reserved if t < r_end and r_start < t + busy]
        if clash:
            t = max(clash) + 1.0
            continue
        if t + busy > end:
            return out
        deck.pop()
        out.append(Fault(0, kind, lane, round(t, 2), duration, params))
        t += duration + OVERHEAD.get(kind, 0.0) * 0.5 + _u(rng, GAPS.get(lane, DEFAULT_GAP))


def fault_plan(rng: random.Random, seconds: float) -> list[Fault]:
    """Faults of every lane between WARMUP and ``seconds - TAIL``; see the module docstring."""
    end = seconds - TAIL
    disk = _lane(rng, "disk", end, [])
    faults = list(disk)
    # A kill while the writer holds a backlog: inside the first long lock, then in a third of the others.
    reserved: list[tuple[float, float]] = []
    first_lock = next((f for f in disk if f.kind == "db_lock" and f.duration >= 3.0), None)
    for fault in disk:
        # A lock makes the writer fail at once (busy_timeout); a full disk only once the WAL must grow.
        if fault.duration >= 3.0 and (fault is first_lock or rng.random() < 0.35):
            at = round(fault.at + _u(rng, (1.5, min(fault.duration - 1.0, 4.0))), 2)
            down = _u(rng, DURATIONS["agent_kill_backlog"])
            faults.append(Fault(0, "agent_kill_backlog", "agent", at, down, {"within": fault.at}))
            reserved.append((at - 1.0, at + down + 5.0))
    for lane in LANES:
        if lane != "disk":
            faults.extend(_lane(rng, lane, end, reserved if lane == "agent" else []))
    # Once per run, the sidecar restarts with a second sink (the "new sink" case), between its kills.
    if seconds > 2 * WARMUP + TAIL:
        at = WARMUP + (end - WARMUP) * (0.4 + 0.3 * rng.random())
        kills = [f for f in faults if f.lane == "sidecar"]
        while any(f.at - 2.0 < at < f.at + f.duration + 3.0 for f in kills):
            at += 1.0
        if at < end:
            faults.append(Fault(0, "sidecar_new_sink", "sidecar", round(at, 2), 0.0, {}))
    faults.sort(key=lambda f: (f.at, f.kind))
    return [Fault(n, f.kind, f.lane, f.at, f.duration, f.params) for n, f in enumerate(faults, 1)]


FLOOD_SECONDS = 45.0  # the flood segment's limit; it usually ends sooner, at its count


def add_flood(rng: random.Random, plan: Plan, events: int) -> Plan:
    """A flood (``events`` as fast as the server takes them, 100 per stanza) while the disk is full:
    the writer's backlog passes its high-water mark (100,000 records), so reads pause, pings go
    unanswered, the connection drops and a new one is read (DESIGN issue 10, defect 1).

    Drawn after everything else, so a plan with a flood has the same other faults, minus the disk
    faults (and their backlog kills) that would overlap it.
    """
    end = plan.stream_seconds - TAIL
    at = round(WARMUP + (end - WARMUP) * (0.3 + 0.15 * rng.random()), 2)
    window = (at - 3.0, at + FLOOD_SECONDS + 12.0)
    if window[1] > end:
        raise ValueError(f"a flood needs {FLOOD_SECONDS + 2 * TAIL + WARMUP + 15:.0f} s of stream at least")

    def clear(f: Fault) -> bool:
        if f.lane != "disk" and f.kind not in ("agent_kill_backlog", "server_kill"):
            return True  # a server killed mid-flood would restart the flood (the stream pauses)
        return f.at + f.duration < window[0] or f.at > window[1]

    faults = [f for f in plan.faults if clear(f)]
    faults.append(Fault(0, "disk_full_flood", "disk", round(at - 2.0, 2), FLOOD_SECONDS + 8.0, {"events": events}))
    faults.sort(key=lambda f: (f.at, f.kind))
    faults = [Fault(n, f.kind, f.lane, f.at, f.duration, f.params) for n, f in enumerate(faults, 1)]
    segments: list[Segment] = []
    flood = Segment(at, FLOOD_SECONDS, "flood", 0.0, 100)
    for seg in plan.segments:
        seg_end = seg.at + seg.duration
        if seg_end <= flood.at or seg.at >= flood.at + flood.duration:
            segments.append(seg)
            continue
        if seg.at < flood.at:
            segments.append(Segment(seg.at, round(flood.at - seg.at, 2), seg.mode, seg.rate, seg.batch))
        if seg_end > flood.at + flood.duration:
            rest = flood.at + flood.duration
            segments.append(Segment(rest, round(seg_end - rest, 2), seg.mode, seg.rate, seg.batch))
    segments.append(flood)
    segments.sort(key=lambda seg: seg.at)
    return Plan(plan.seed, plan.stream_seconds, segments, faults, events)


def make_plan(seed: int, minutes: float, rate: float, flood: int = 0, only: frozenset[str] | None = None) -> Plan:
    """The whole plan: the stream runs ``minutes``; faults fill it, bounded on both ends.

    ``only``: keep just the faults of these kinds (the others' times stay empty, so a fault keeps
    its time whatever else is dropped): to isolate one kind, or with an empty set, a control run.
    """
    rng = random.Random(seed)
    seconds = round(minutes * 60.0, 2)
    segments = stream_plan(rng, seconds, rate)
    faults = fault_plan(rng, seconds)
    plan = Plan(seed, seconds, segments, faults)
    if flood:
        plan = add_flood(rng, plan, flood)
    if only is not None:
        only = frozenset(OLD_NAMES.get(kind, kind) for kind in only)
        unknown = only - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s): {', '.join(sorted(unknown))}")
        kept = [f for f in plan.faults if f.kind in only]
        plan = Plan(plan.seed, seconds, plan.segments, kept, plan.flood)
    return plan
