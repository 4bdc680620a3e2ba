"""The per-alert delivery order of a sink (agent.store.sequencing), as a pure function."""

from __future__ import annotations

from agent.store.sequencing import Pending, plan

NOW = "2026-11-22T10:00:00.000Z"
LATER = "2026-11-22T10:00:30.000Z"
EARLY = "1970-01-01T00:00:00.000Z"


def row(id_: int, alert: int, transition: str, when: str = EARLY) -> Pending:
    return Pending(id_, alert, transition, f"k{id_}", when)


def test_one_per_alert_oldest_first_and_a_parked_head_holds_back_its_alert() -> None:
    """Only each alert's oldest pending notification is due; a parked one blocks the later ones of its alert only."""
    rows = [row(1, 10, "firing", LATER), row(2, 10, "resolved"), row(3, 20, "firing"), row(4, 20, "resolved")]
    out = plan(rows, "ordered", NOW, 100)
    assert out.due == [3] and out.superseded == []


def test_ordered_supersedes_only_repeats_followed_by_a_later_one() -> None:
    """'ordered' keeps firing and resolved, drops repeats that a later notification of the alert replaces."""
    rows = [row(1, 10, "firing"), row(2, 10, "repeat"), row(3, 10, "repeat"), row(4, 10, "resolved"),
            row(5, 20, "repeat")]  # fmt: skip
    out = plan(rows, "ordered", NOW, 100)
    assert out.due == [1, 5] and out.superseded == [(2, "k4"), (3, "k4")]


def test_latest_keeps_the_newest_even_past_a_parked_one() -> None:
    """'latest' supersedes everything but the newest of each alert, which is due at once."""
    rows = [row(1, 10, "firing", LATER), row(2, 10, "resolved"), row(3, 20, "firing", LATER)]
    out = plan(rows, "latest", NOW, 100)
    assert out.due == [2] and out.superseded == [(1, "k2")]


def test_limit_takes_the_oldest() -> None:
    """At most ``limit`` notifications, the oldest first, across alerts."""
    rows = [row(i, i, "firing") for i in range(10, 0, -1)]
    assert plan(rows, "ordered", NOW, 3).due == [1, 2, 3]
