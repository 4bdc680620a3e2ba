"""The chaos soak (bench/soak.py): its parts, quickly, and a short seeded run of the whole.

The unit tests below check the harness itself (the plan, the webhook receiver's fault modes, the
emulator's record, each invariant on made-up data), so that a failing soak means the agent and
not the harness. ``test_suite_soak`` runs the real thing (Prosody, the emulator, the agent, the
sidecar, faults) for five minutes of stream (about six in all) and is part of ``make test`` (as
root: a tmpfs, ``ss -K``; it runs first, on one of the two workers, beside the rest of the suite);
the seeds that once failed (``REGRESSION_SEEDS``) run for the minutes they failed in (1 to 60) and
are deselected by default: ``.venv/bin/python -m pytest -m soak_regression tests/test_soak.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree as ET

import httpx
import orjson
import pytest

from agent.events import iso
from agent.lab import emulator
from agent.lab.emulator.wire import DEFECTS, NAMESPACE, malformed_event

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.chaos import invariants as inv  # noqa: E402
from bench.chaos.emulate import RecordingFactory, element_text  # noqa: E402
from bench.chaos.observe import quarantine_text_key  # noqa: E402
from bench.chaos.receiver import MAX_413_BATCH, Receiver  # noqa: E402
from bench.chaos.schedule import KINDS, LANES, TAIL, WARMUP, make_plan  # noqa: E402

# -- the plan ------------------------------------------------------------------------------------


def test_plan_is_fixed_by_the_seed() -> None:
    assert make_plan(7, 3, 400) == make_plan(7, 3, 400)
    assert make_plan(7, 3, 400) != make_plan(8, 3, 400)


@pytest.mark.parametrize(("seed", "flood"), [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (1, 200_000), (2, 200_000)])
def test_plan_keeps_lanes_apart_and_within_bounds(seed: int, flood: int) -> None:
    plan = make_plan(seed, 3, 400, flood)
    assert set(plan.counts()) == set(KINDS)
    by_lane: dict[str, list] = {}
    for fault in plan.faults:
        assert fault.at >= WARMUP and fault.at + fault.duration <= plan.stream_seconds - TAIL + 1
        by_lane.setdefault(fault.lane, []).append(fault)
    for lane, faults in by_lane.items():
        if lane in ("agent", "sidecar"):
            continue  # placed around each other by reservation, checked below
        for a, b in itertools.pairwise(faults):
            assert a.at + a.duration <= b.at, f"{lane}: #{a.n} overlaps #{b.n}"
    disk = [f for f in plan.faults if f.lane == "disk"]
    for kill in (f for f in plan.faults if f.kind == "agent_kill_backlog"):
        assert any(d.at < kill.at < d.at + d.duration for d in disk), "a backlog kill falls inside a disk fault"
        others = [f for f in plan.faults if f.lane == "agent" and f is not kill]
        assert not any(f.at <= kill.at <= f.at + f.duration for f in others)
    # Every lane's kinds come up in a three-minute plan (the deck deals each before repeating).
    for lane, kinds in LANES.items():
        if len([f for f in plan.faults if f.lane == lane]) >= len(kinds):
            assert all(plan.counts()[k] for k in kinds), lane
    assert sum(s.duration for s in plan.segments) == pytest.approx(plan.stream_seconds, abs=1.0)
    assert {s.mode for s in plan.segments} == {"mixed", "burst", "calm"} | ({"flood"} if flood else set())
    if flood:
        (window,) = [f for f in plan.faults if f.kind == "disk_full_flood"]
        (seg,) = [s for s in plan.segments if s.mode == "flood"]
        assert window.at < seg.at and seg.at + seg.duration < window.at + window.duration
        assert not [
            f for f in plan.faults if f.kind == "server_kill" and window.at <= f.at <= window.at + window.duration
        ]
        others = make_plan(seed, 3, 400)
        assert [f.kind for f in others.faults if f.lane not in ("disk", "server", "agent")] == [
            f.kind for f in plan.faults if f.lane not in ("disk", "server", "agent")
        ]


#: sha256 (first 16 hex digits) of each plan as it was before the server faults were renamed
#: (prosody_freeze/prosody_kill to server_freeze/server_kill, for ejabberd): (seed, minutes, flood).
PINNED_PLANS = {
    (8, 5, 0): "3656b5eac94feb49", (8, 1, 0): "dfa0b1eef2c4fab6", (60, 60, 0): "be913ea3b6baa818",
    (1, 3, 0): "cae5135717cead1d", (2, 3, 200_000): "ff9d67659cfbfeee",
}  # fmt: skip


@pytest.mark.parametrize(("seed", "minutes", "flood"), sorted(PINNED_PLANS))
def test_a_seeds_plan_is_unchanged(seed: int, minutes: float, flood: int) -> None:
    """The suite's and the regression seeds' plans are the ones they failed with (the rename drew nothing)."""
    plan = make_plan(seed, minutes, 400, flood)
    old = {"server_freeze": "prosody_freeze", "server_kill": "prosody_kill"}
    data = [[s.at, s.duration, s.mode, s.rate, s.batch] for s in plan.segments] + [
        [f.n, old.get(f.kind, f.kind), f.lane, f.at, f.duration, sorted(f.params.items())] for f in plan.faults
    ]
    assert hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16] == PINNED_PLANS[(seed, minutes, flood)]


def test_only_still_takes_the_old_server_fault_names() -> None:
    """``--only prosody_kill`` (docs, old notes) keeps the server kills, now named server_kill."""
    plan = make_plan(8, 5, 400, only=frozenset({"prosody_kill"}))
    assert plan.faults and {f.kind for f in plan.faults} == {"server_kill"}


def test_plan_only_keeps_the_named_kinds_at_their_times() -> None:
    full = make_plan(3, 3, 400)
    kills = make_plan(3, 3, 400, only=frozenset({"agent_kill_catchup"}))
    assert kills.faults and {f.kind for f in kills.faults} == {"agent_kill_catchup"}
    assert [(f.n, f.at) for f in kills.faults] == [(f.n, f.at) for f in full.faults if f.kind == "agent_kill_catchup"]
    assert make_plan(3, 3, 400, only=frozenset()).faults == []
    with pytest.raises(ValueError, match="unknown fault kind"):
        make_plan(3, 3, 400, only=frozenset({"agent_kil"}))


# -- the receiver ----------------------------------------------------------------------------------


def _post(receiver: Receiver, n: int, sink: str = "alerts", timeout: float = 2.0) -> httpx.Response:
    messages = [{"id": f"k{i}", "alert": {"alert_id": 1}, "transition": "firing", "created_at": "x"} for i in range(n)]
    return httpx.post(receiver.url(sink), json={"messages": messages}, timeout=timeout)


def test_receiver_modes() -> None:
    receiver = Receiver(retry_after=2, hang_seconds=1.0)
    receiver.start()
    try:
        assert _post(receiver, 2).status_code == 200
        assert [d.key for d in receiver.deliveries] == ["k0", "k1"]
        receiver.set_mode("500")
        assert _post(receiver, 2).status_code == 500
        receiver.set_mode("429")
        response = _post(receiver, 2)
        assert response.status_code == 429 and response.headers["Retry-After"] == "2"
        receiver.set_mode("207")
        response = _post(receiver, 4)
        results = response.json()["responses"]
        assert response.status_code == 207 and len(results) == 4
        assert sum("xactionId" in r for r in results) == 2
        assert all(r.get("statusCode") == 500 for r in results if "xactionId" not in r)
        receiver.set_mode("413")
        assert _post(receiver, MAX_413_BATCH + 1).status_code == 413
        assert _post(receiver, MAX_413_BATCH).status_code == 200
        receiver.set_mode("hang")
        with pytest.raises(httpx.TimeoutException):
            _post(receiver, 1, timeout=0.5)
        receiver.set_mode("down")
        with pytest.raises(httpx.ConnectError):
            _post(receiver, 1)
        receiver.set_mode("ok")
        assert _post(receiver, 1, sink="late").status_code == 200
        # Accepted: 2 (ok) + 2 (half of the 207) + 3 (small batch in 413 mode) + 1 (late); nothing else.
        assert len(receiver.deliveries) == 8
        assert receiver.deliveries[-1].sink == "late"
    finally:
        receiver.stop()


# -- the emulator's record -------------------------------------------------------------------------


def test_record_matches_what_the_emulator_sends_and_the_agent_quarantines() -> None:
    factory = RecordingFactory(emulator.EmulatorOptions(seed=3, malformed=0.5))
    eid, kind, xml = factory.valid("demo", "2026-11-22T10:00:00.000Z")
    record = orjson.loads(factory.records[-1])
    assert (record["id"], record["kind"], record["ts"]) == (eid, kind, "2026-11-22T10:00:00.000Z")
    for _ in range(len(DEFECTS)):
        defect, xml = factory.malformed("demo", "2026-11-22T10:00:00.000Z")
        record = orjson.loads(factory.records[-1])
        assert record["defect"] == defect
        element = ET.fromstring(xml)
        if defect in inv.ID_LESS_DEFECTS:
            # The agent quarantines ET.tostring(element) without an id: the text is the identity.
            assert quarantine_text_key(ET.tostring(element, encoding="unicode")) == inv.malformed_key(record)
        else:
            assert element.get("id") == record["id"] == inv.malformed_key(record)


def test_element_text_undoes_the_emulators_escaping() -> None:
    xml = malformed_event("invalid-json", NAMESPACE, "bad-1", "demo", "2026-11-22T10:00:00.000Z", random.Random(1))
    assert element_text(xml) == ET.fromstring(xml).text


# -- the invariants ----------------------------------------------------------------------------------

T0 = 1_800_000_000.0


def ts(seconds: float) -> str:
    return iso(T0 + seconds)


def test_check_events_finds_lost_duplicated_and_unexpected() -> None:
    sent = {"a": ts(1), "b": ts(2), "c": ts(10)}
    spans = [inv.Span(1, "agent_kill", T0 + 1.5, T0 + 3)]
    good = inv.check_events(set(sent), Counter({"a": 1, "b": 1, "c": 1}), sent, spans, T0)
    assert good.ok and good.numbers["lost"] == 0
    bad = inv.check_events(set(sent), Counter({"a": 2, "x": 1}), sent, spans, T0, archived={"b"})
    assert not bad.ok
    assert (bad.numbers["lost"], bad.numbers["duplicated_rows"], bad.numbers["unexpected"]) == (2, 1, 1)
    assert "1 of them still in the server's archive" in bad.evidence[0] and "#1 agent_kill" in bad.evidence[0]


def _state(eid: str, t: float, value: int, kind: str = "tag") -> dict:
    payload = {"device_id": "d-1", "name": "plan", "value": value}
    return {"t": "V", "id": eid, "kind": kind, "app": "demo", "ts": ts(t), "p": json.dumps(payload)}


def test_check_state_wants_the_newest_value_and_accepts_ties() -> None:
    sent = [_state("e1", 1, 1), _state("e2", 2, 2), _state("e3", 2, 3)]
    key = ("tag", "demo", "d-1", "plan")
    assert inv.check_state(sent, {key: (ts(2), "e3", "3")}, T0).ok
    assert inv.check_state(sent, {key: (ts(2), "e2", "2")}, T0).numbers["tied_ok"] == 1
    stale = inv.check_state(sent, {key: (ts(1), "e1", "1")}, T0)
    assert not stale.ok and stale.numbers["stale"] == 1
    wrong = inv.check_state(sent, {key: (ts(2), "e2", "3")}, T0)
    assert not wrong.ok and wrong.numbers["wrong_value"] == 1
    assert inv.check_state(sent, {}, T0).numbers["missing"] == 1


def test_check_quarantine_counts_rows_per_malformed_event() -> None:
    text = '{"device_id":"d-1"}'
    sent = [
        {"t": "M", "id": "bad-1", "defect": "bad-ts", "text": "{}"},
        {"t": "M", "id": "bad-2", "defect": "missing-id", "text": text},
    ]
    raw = f"<event xmlns='{NAMESPACE}' kind='activity'>{text}</event>"
    rows = [("bad-1", "<x/>", ts(1)), (None, raw, ts(1))]
    assert inv.check_quarantine(sent, rows, [], T0).ok
    doubled = inv.check_quarantine(sent, [*rows, ("bad-1", "<x/>", ts(5))], [], T0)
    assert not doubled.ok and doubled.numbers["extra_rows"] == 1
    missing = inv.check_quarantine(sent, rows[:1], [], T0)
    assert not missing.ok and missing.numbers["missing"] == 1


def _notes() -> list[inv.Notification]:
    return [
        inv.Notification(1, "k1", 10, "firing", T0 + 1, "api/demo/401/reach"),
        inv.Notification(2, "k2", 10, "resolved", T0 + 2, "api/demo/401/reach"),
        inv.Notification(3, "k3", 11, "firing", T0 + 3, "api/demo/500/push"),
    ]


def test_check_delivery_explains_repeats_by_a_kill_only() -> None:
    accepted = [inv.Accepted(T0 + 1, "alerts", "k1"), inv.Accepted(T0 + 2, "alerts", "k2"),
                inv.Accepted(T0 + 3, "alerts", "k3"), inv.Accepted(T0 + 5, "alerts", "k3")]  # fmt: skip
    explained = inv.check_delivery(_notes(), accepted, "alerts", [T0 + 4], {}, T0)
    assert explained.ok and explained.numbers["delivered_more_than_once"] == 1
    unexplained = inv.check_delivery(_notes(), accepted, "alerts", [], {}, T0)
    assert not unexplained.ok and unexplained.numbers["of_which_unexplained"] == 1
    lost = inv.check_delivery(_notes(), accepted[:2], "alerts", [], {3: ("pending", 3, "HTTP 500")}, T0)
    assert not lost.ok and lost.numbers["undelivered"] == 1 and "pending" in lost.evidence[0]


def test_check_delivery_excuses_only_superseded_repeats() -> None:
    """docs/alerts.md: a pending repeat replaced by a later notification of its alert is never sent;
    a firing or resolved marked superseded for a webhook sink is still a lost notification."""
    notes = [*_notes(), inv.Notification(4, "k4", 11, "repeat", T0 + 4, "api/demo/500/push"),
             inv.Notification(5, "k5", 11, "resolved", T0 + 5, "api/demo/500/push")]  # fmt: skip
    accepted = [inv.Accepted(T0 + n, "alerts", f"k{n}") for n in (1, 2, 3, 5)]
    states = {4: ("superseded", 0, "superseded by notification k5")}
    check = inv.check_delivery(notes, accepted, "alerts", [], states, T0)
    assert check.ok and check.numbers["superseded_repeats"] == 1 and check.numbers["undelivered"] == 0
    states[2] = ("superseded", 0, "superseded by notification k3")
    firing_lost = inv.check_delivery(notes, [a for a in accepted if a.key != "k2"], "alerts", [], states, T0)
    assert not firing_lost.ok and firing_lost.numbers["undelivered"] == 1


def test_check_order_catches_a_firing_after_its_resolved() -> None:
    in_order = [inv.Accepted(T0 + 1, "alerts", "k1"), inv.Accepted(T0 + 2, "alerts", "k2")]
    assert inv.check_order(_notes(), in_order, "alerts", [], T0).ok
    reordered = [inv.Accepted(T0 + 1, "alerts", "k2"), inv.Accepted(T0 + 2, "alerts", "k1")]
    check = inv.check_order(_notes(), reordered, "alerts", [], T0)
    assert not check.ok and check.numbers["out_of_order"] == 1 and "firing #1" in check.evidence[0]


def test_check_new_sink_allows_only_the_state_of_open_alerts() -> None:
    # Added after notification 3: alert 10 is resolved (nothing to send), alert 11 is firing (its #3).
    assert inv.check_new_sink(_notes(), [inv.Accepted(T0 + 9, "late", "k3")], "late", 3, T0).ok
    history = [inv.Accepted(T0 + 9, "late", k) for k in ("k1", "k2", "k3")]
    check = inv.check_new_sink(_notes(), history, "late", 3, T0)
    assert not check.ok and check.numbers["history_received"] == 2
    assert check.numbers["of_alerts_already_resolved"] == 2


def test_check_rss_bound_and_growth() -> None:
    flat = [(T0 + t, 1, 60_000) for t in range(60)]
    assert inv.check_rss(flat, T0 + 5, T0 + 40, 200, 32, T0).ok
    growing = [(T0 + t, 1, 60_000 + t * 2_000) for t in range(60)]
    check = inv.check_rss(growing, T0 + 5, T0 + 40, 200, 32, T0)
    assert not check.ok and check.numbers["growth_mb"] > 32
    # A process that just started is still loading: its first 10 s are not compared.
    restarted = [*flat[:20], *((T0 + t, 2, 20_000 + (t - 20) * 4_000) for t in range(20, 30)),
                 *((T0 + t, 2, 60_000) for t in range(30, 60))]  # fmt: skip
    assert inv.check_rss(restarted, T0 + 20, T0 + 40, 200, 32, T0).numbers["after_first_fault_mb"] == pytest.approx(
        58.6, abs=0.1
    )


# -- the whole soak ----------------------------------------------------------------------------------

#: The profile ``make test`` runs: seed and minutes of stream.
SUITE_SEED, SUITE_MINUTES = 8, 5


def test_suite_profile_covers_the_faults_that_matter() -> None:
    """The plan of the suite's soak has every agent kill, server and disk fault and every webhook mode
    (guards the seed choice against changes in the planner)."""
    counts = make_plan(SUITE_SEED, SUITE_MINUTES, 400).counts()
    for kind in ("agent_kill", "agent_kill_catchup", "agent_kill_backlog", "sidecar_kill", "sidecar_new_sink",
                 "server_freeze", "server_kill", "tcp_cut", "disk_full", "db_lock"):  # fmt: skip
        assert counts[kind], kind
    assert all(counts[k] > 0 for k in LANES["webhook"])


#: Seeds that failed once, kept as regression runs (seed: minutes, what it caught). Each is a
#: ``soak_regression``-marked run of bench/soak.py, deselected by default (minutes each):
#: ``.venv/bin/python -m pytest -m soak_regression tests/test_soak.py``.
REGRESSION_SEEDS: dict[int, tuple[float, str]] = {
    1: (
        3,
        "events lost after a catch-up kill (the archive position ran ahead; lead's fix on main); one quarantine"
        " row per replay; a new sink got history; then, after the merge of main, 57 extra quarantine rows: a"
        " catch-up from Prosody's archive gives an event's attributes in another order, which changed the"
        " quarantine digest (fixed in plugins/monitor_events, tests/plugins/test_quarantine_replay_order.py)",
    ),
    2: (
        3,
        "as seed 1 (events lost 36-52%, quarantine replays, history to a new sink; then the attribute-order"
        " quarantine rows), and a superseded repeat the harness counted as lost (harness fixed)",
    ),
    3: (3, "as seed 1 before the fixes on main; passes since"),
    8: (
        1,
        "the short profile: every agent kill, server and disk fault in one minute (failed before the fixes on main)",
    ),
    60: (
        60,
        "6,204 events lost 57 minutes in (all in the archive): a backlog committed in chunks after a locked"
        " database wrote the newest mam_last_id with its first chunk, and a kill came before the rest"
        " (fixed in agent/store/backlog.py, tests/store/test_backlog.py)",
    ),
}


def _soak(tmp_path: Path, seed: int, minutes: float, server: str = "prosody") -> None:
    """Run bench/soak.py and fail with its evidence unless every invariant holds."""
    if os.geteuid() != 0:
        pytest.fail("the soak needs root (a tmpfs for the database, ss -K): run it as the CI does")
    out = tmp_path / "soak.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--seed", str(seed), "--minutes", str(minutes), "--json",
         str(out), "--workdir", str(tmp_path / "work"), "--quiet", "--server", server],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=240 + minutes * 60 * 3)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the soak cleans up (processes, tmpfs) on SIGTERM
        stdout, stderr = proc.communicate(timeout=90)
    assert out.exists(), f"no summary (exit {proc.returncode}): {stderr[-3000:]}"
    summary = json.loads(out.read_text())
    harness = next(c for c in summary["checks"] if c["name"] == "harness")
    assert harness["ok"], f"the harness failed: {harness}"
    failed = [f"{c['name']}: {c['numbers']} {c['evidence'][:3]}" for c in summary["checks"] if not c["ok"]]
    assert not failed, "invariants failed:\n" + "\n".join(failed) + "\n" + stdout[-4000:]
    assert proc.returncode == 0


@pytest.mark.soak  # not also "prosody": `-m prosody` must not pull in a soak (it runs its own server)
@pytest.mark.timeout(1800)
def test_suite_soak(tmp_path: Path) -> None:
    """Five minutes, seed SUITE_SEED (every fault kind but the flood, about 120 faults): every invariant holds."""
    _soak(tmp_path, SUITE_SEED, SUITE_MINUTES)


@pytest.mark.soak
@pytest.mark.soak_regression
@pytest.mark.timeout(5400)  # seed 60 runs an hour
@pytest.mark.parametrize("seed", sorted(REGRESSION_SEEDS))
def test_regression_seed(tmp_path: Path, seed: int) -> None:
    """A seed that failed once (REGRESSION_SEEDS says what it caught) passes now."""
    _soak(tmp_path, seed, REGRESSION_SEEDS[seed][0])


#: The ejabberd soak (issue 10: the fault tests and the soak on both servers): seed and minutes.
#: Not in ``make test`` (the suite's five-minute Prosody soak already takes one worker for six
#: minutes); it runs with the regression seeds: ``-m soak_regression`` (131 s on the 2-core machine).
EJABBERD_SEED, EJABBERD_MINUTES = 8, 2


def test_ejabberd_profile_covers_every_fault_kind() -> None:
    """The short ejabberd soak's plan has every fault kind but the flood (guards its seed and length)."""
    counts = make_plan(EJABBERD_SEED, EJABBERD_MINUTES, 400).counts()
    assert [k for k in KINDS if k != "disk_full_flood" and not counts[k]] == []


@pytest.mark.soak  # not also "ejabberd": `-m ejabberd` must not pull in a soak (it runs its own server)
@pytest.mark.soak_regression
@pytest.mark.timeout(1200)
def test_ejabberd_soak(tmp_path: Path) -> None:
    """Two minutes of seed 8 against ejabberd (every agent kill, server and disk fault): every invariant holds."""
    _soak(tmp_path, EJABBERD_SEED, EJABBERD_MINUTES, "ejabberd")
