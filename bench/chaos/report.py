"""The soak's tables (faults x results, invariants) and its JSON summary."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any

from .schedule import KINDS

if TYPE_CHECKING:
    from .invariants import Check
    from .run import Soak

#: Regressions the tracker notices as they happen, as the fault table names them.
REGRESSIONS = (
    ("duplicated rows", "dup rows"),
    ("extra quarantine rows", "extra quar."),
    ("delivered twice (alerts)", "twice deliv."),
    ("out of order (alerts)", "out of order"),
)


def fault_rows(soak: Soak) -> list[list[str]]:
    rows = []
    for kind in KINDS:
        runs = [f for f in soak.faults if f.kind == kind and f.started]
        if not runs:
            rows.append([kind, "0", *["-"] * (6 + len(REGRESSIONS))])
            continue
        aimed = [f for f in runs if f.landed is not None]
        settled = [f.settled_s for f in runs if f.settled_s is not None]
        ev = [f.events_settled_s for f in runs if f.events_settled_s is not None]
        no = [f.notifications_settled_s for f in runs if f.notifications_settled_s is not None]
        unsettled = [f for f in runs if f.unsettled]
        lost = sum(len(f.missing_events) for f in runs)
        errors = sum(1 for f in runs if f.error)
        rows.append([
            kind,
            str(len(runs)) + (f" ({errors} err)" if errors else ""),
            f"{sum(bool(f.landed) for f in aimed)}/{len(aimed)}" if aimed else "-",
            f"{len(settled)}/{len(runs)}",
            _medmax(ev),
            _medmax(no),
            str(len(unsettled)),
            str(lost),
            *(str(sum(f.regressions.get(name, 0) for f in runs)) for name, _ in REGRESSIONS),
        ])  # fmt: skip
    return rows


def _medmax(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}/{max(values):.1f}" if values else "-"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def render(soak: Soak, checks: list[Check], agent_log: dict[str, Any] | None = None) -> str:
    opts = soak.opts
    header = ["fault", "injected", "landed", "settled", "events s", "notif. s", "unsettled", "lost in window",
              *(short for _, short in REGRESSIONS)]  # fmt: skip
    parts = [
        f"xmppmon chaos soak: seed {opts.seed}, {opts.minutes:g} min, server {opts.server}, work dir {soak.work}",
        "",
        "faults x results. landed: the kill hit a running catch-up / a writer backlog. settled: every event sent and"
        " every notification made in the fault's window (2 s before it started until it ended) was stored /"
        " delivered; 'events s' and 'notif. s' are the median/max seconds that took after the fault ended."
        f" lost in window: events of its window still not stored {opts.settle_deadline:g} s after it ended."
        " The last four columns count what appeared while the fault"
        " was active or in the 20 s after it (overlapping faults share them).",
        table(header, fault_rows(soak)),
        "",
        table(["invariant", "result", "numbers"], [[c.name, "PASS" if c.ok else "FAIL", c.summary()] for c in checks]),
    ]
    if agent_log:
        parts += ["", "agent log: " + ", ".join(f"{k} {v}" for k, v in agent_log["counts"].items())]
    if "archive" in soak.final:
        parts.append(f"server: {soak.final['archive']}")
    failed = [c for c in checks if not c.ok]
    if failed:
        parts.append("")
        parts.append("evidence:")
        for c in failed:
            for line in c.evidence or ["(no detail)"]:
                parts.append(f"  [{c.name}] {line}")
    parts.append("")
    parts.append(f"result: {'PASS' if not failed else f'FAIL ({len(failed)} of {len(checks)} invariants)'}")
    return "\n".join(parts)


def summary(soak: Soak, checks: list[Check], extra: dict[str, Any]) -> dict[str, Any]:
    t0 = soak.t0
    regressions = [
        {"t_s": round(r.t - t0, 2), "what": r.what, "amount": r.amount, "sample": r.sample, "faults": r.faults}
        for r in soak.tracker.regressions
    ]
    return {
        "seed": soak.opts.seed,
        "minutes": soak.opts.minutes,
        "server": soak.opts.server,
        "workdir": str(soak.work),
        "ok": all(c.ok for c in checks),
        "faults_planned": soak.plan.counts(),
        "faults_injected": dict(Counter(f.kind for f in soak.faults if f.started)),
        "checks": [{"name": c.name, "ok": c.ok, "numbers": c.numbers, "evidence": c.evidence} for c in checks],
        "faults": [f.as_dict(t0) for f in soak.faults],
        "regressions": regressions,
        "final": {k: v for k, v in soak.final.items()},
        "counters": extra.get("counters", {}),
        "agent_log": extra.get("agent_log", {}),
        "sidecar_log_errors": extra.get("sidecar_log", {}),
        "segments": [vars(s) for s in soak.plan.segments],
    }
