"""New alert rules on a running engine (a reload): the cached active alerts stay, and one evaluation never mixes
two rule sets."""

from __future__ import annotations

from collections import Counter

from agent.alerts import AlertRules
from agent.config import AlertRule, AlertSettings


def engine(threshold: int) -> AlertRules:
    rules = AlertRules(AlertSettings(rules={"timeout": AlertRule(threshold=threshold, window_seconds=3600)}),
                       frozenset({"api"}))  # fmt: skip
    rules.load([])
    return rules


def batch(rules: AlertRules, n: int, now: float) -> list[str]:
    """One evaluation as the store runs it (needs, then evaluate); the transitions it made."""
    counts = Counter({("demo", "reach", 504): n})
    rules.needs(counts)
    outcome = rules.evaluate(counts, {}, now)
    rules.committed()
    return [t.transition for t in outcome.transitions]


def test_a_lower_threshold_fires_the_pending_alert_it_finds_in_the_cache() -> None:
    """Two 504s pending under threshold 5; after reconfigure(threshold 1) the next 504 fires that same alert, count 3."""
    rules = engine(5)
    assert batch(rules, 2, now=1000.0) == []
    assert rules._active is not None
    [pending] = rules._active.values()
    assert pending.state == "pending"
    rules.reconfigure(AlertSettings(rules={"timeout": AlertRule(threshold=1, window_seconds=3600)}))
    assert batch(rules, 1, now=1001.0) == ["firing"]
    assert list(rules._active.values()) == [pending]
    assert pending.state == "firing" and pending.count == 3 and pending.first_seen == 1000.0


def test_new_rules_wait_for_the_next_evaluation() -> None:
    """Rules given between needs() and evaluate() (a reload while the store reads stored alerts) apply from the next
    evaluation on, so the identities needs() computed still hold for the evaluate() that follows."""
    rules = engine(5)
    counts = Counter({("demo", "reach", 504): 2})
    rules.needs(counts)
    rules.reconfigure(AlertSettings(rules={"timeout": AlertRule(threshold=1, by_class=True)}))
    outcome = rules.evaluate(counts, {}, 1000.0)
    rules.committed()
    assert outcome.transitions == [] and rules.rules["timeout"].threshold == 5
    assert [a.code for a in outcome.dirty] == ["504"]
    assert batch(rules, 1, now=1001.0) == ["firing"]
    assert rules.rules["timeout"].threshold == 1 and rules.rules["timeout"].by_class
    assert rules.settings.rules["timeout"].by_class
