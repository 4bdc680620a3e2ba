"""Alert rules, pure: observations in, transitions out, no SQL and no I/O.

An alert's identity is (source, app, code, api). Observations are aggregated per identity per
batch, so a burst of 10,000 identical 504s costs one Counter key and yields one alert whose count
is 10,000 and one ``firing`` notification. :meth:`AlertRules.evaluate` returns the alerts it
changed and the transitions (firing, repeat, resolved) to notify; the store writes both in the
transaction of the events that caused them (``agent.store.alerts``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from agent.alerts.catalogue import Status, classify, effective_rules
from agent.alerts.model import TIMES, Alert, Identity, Observation, Outcome, Transition
from agent.config import AlertRule, AlertSettings
from agent.events import iso


@dataclass
class AlertRules:
    """Rule evaluation with the active alerts of its own sources cached in memory.

    Only one process writes the alerts of a given source (the agent: api, subscription, session,
    store; the sidecar: sidecar), so the cache stays true as long as a failed transaction drops it
    (:meth:`rollback`). The caller loads the cache (:meth:`load`) and, before each evaluation, the
    stored state of the identities :meth:`needs` names.
    """

    settings: AlertSettings
    sources: frozenset[str]
    rules: dict[str, AlertRule] = field(init=False)
    notifications: int = 0
    _active: dict[Identity, Alert] | None = None
    _pending: list[Observation] = field(default_factory=list)
    _inflight: list[Observation] = field(default_factory=list)
    _last_sweep: float = 0.0
    _out: list[Transition] = field(default_factory=list)
    _next: AlertSettings | None = None

    def __post_init__(self) -> None:
        self.rules = effective_rules(self.settings)

    def reconfigure(self, settings: AlertSettings) -> None:
        """New rules (a reload), taken at the start of the next evaluation (:meth:`needs`), so that one
        evaluation never mixes two rule sets. The cached active alerts stay: each is judged by its
        class's new rule from then on."""
        self._next = settings

    # -- what the store calls -----------------------------------------------------------------

    def observe(self, observation: Observation) -> None:
        """Queue a health observation for the next transaction."""
        self._pending.append(observation)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    @property
    def loaded(self) -> bool:
        return self._active is not None

    def sweep_due(self, now: float | None = None) -> bool:
        return (now or time.time()) - self._last_sweep >= self.settings.sweep_seconds

    def load(self, active: Iterable[Alert]) -> None:
        """Fill the cache with the stored pending and firing alerts of this engine's sources."""
        self._active = {alert.identity: alert for alert in active}

    def needs(self, api_counts: Counter[tuple[str, str, int]] | None = None) -> set[Identity]:
        """Identities the next evaluation touches that are not cached: their stored state is wanted."""
        assert self._active is not None, "load() first"
        if self._next is not None:
            self.settings, self.rules, self._next = self._next, effective_rules(self._next), None
        wanted: set[Identity] = set()
        for (app, api, status), _n in (api_counts or {}).items():
            entry = classify(str(status))
            if entry.cls != "ok":
                wanted.add(self._identity(("api", app, str(status), api), entry))
        # This evaluation's observations: the caller awaits its reads before evaluate(), and one
        # queued meanwhile, whose stored row was not read, waits for the next evaluation.
        self._inflight, self._pending = self._pending, []
        for obs in self._inflight:
            if not obs.ok:
                wanted.add(self._identity((obs.source, obs.app, obs.code, obs.api), classify(obs.code)))
        return {identity for identity in wanted if identity not in self._active}

    def evaluate(
        self,
        api_counts: Counter[tuple[str, str, int]] | None = None,
        stored: dict[Identity, Alert] | None = None,
        now: float | None = None,
    ) -> Outcome:
        """Apply this batch's api statuses and the observations :meth:`needs` took, and sweep when due.

        Call :meth:`needs` first. ``api_counts`` maps (app, api, status) to occurrences; ``stored``
        holds the stored state of the identities :meth:`needs` named (absent ones are new).
        """
        if not self.settings.enabled:
            self._inflight.clear()
            return Outcome([], [])
        assert self._active is not None, "load() first"
        now = time.time() if now is None else now
        stored = stored or {}
        dirty: dict[Identity, Alert] = {}
        oks: set[tuple[str, str, str]] = set()
        for (app, api, status), n in (api_counts or {}).items():
            code = str(status)
            entry = classify(code)
            if entry.cls == "ok":
                oks.add(("api", app, api))
            else:
                self._occur(("api", app, code, api), entry, n, None, now, dirty, stored)
        for obs in self._inflight:  # in order: up, down, up in one batch ends up
            if obs.ok:
                self._resolve((obs.source, obs.app, obs.api), now, dirty)
            else:
                self._occur((obs.source, obs.app, obs.code, obs.api), classify(obs.code), 1,
                            obs.detail, now, dirty, stored)  # fmt: skip
        for key in oks:
            self._resolve(key, now, dirty)
        if now - self._last_sweep >= self.settings.sweep_seconds:
            self._sweep(now, dirty)
            self._last_sweep = now
        out, self._out = self._out, []
        self.notifications += len(out)
        return Outcome(list(dirty.values()), out)

    def committed(self) -> None:
        self._inflight = []

    def rollback(self) -> None:
        """The transaction failed: requeue its observations and forget the cached state."""
        self._pending = self._inflight + self._pending
        self._inflight = []
        self._out.clear()
        self._active = None

    # -- rules ---------------------------------------------------------------------------------

    def _rule(self, cls: str) -> AlertRule:
        return self.rules.get(cls) or self.rules["server"]

    def _identity(self, identity: Identity, entry: Status) -> Identity:
        if self._rule(entry.cls).by_class:
            return (identity[0], identity[1], entry.cls, identity[3])
        return identity

    def _occur(self, identity: Identity, entry: Status, n: int, detail: str | None, now: float,
               dirty: dict[Identity, Alert], stored: dict[Identity, Alert]) -> None:  # fmt: skip
        rule = self._rule(entry.cls)
        identity = self._identity(identity, entry)
        assert self._active is not None
        alert = self._active.get(identity) or dirty.get(identity) or stored.get(identity)
        if alert is None:
            source, app, code, api = identity
            alert = Alert(None, source, app, code, api, entry.cls, rule.severity or entry.severity or "info")
        self._active[identity] = alert
        if alert.state in ("inactive", "resolved"):
            if alert.state == "resolved" and alert.resolved_at is not None:
                recent = now - alert.resolved_at < (rule.flap_seconds or 0)
                alert.flaps = alert.flaps + 1 if recent else 0
            alert.state, alert.count, alert.first_seen = "pending", 0, now
            alert.window_start, alert.window_count, alert.fired_at = now, 0, None
        if alert.state == "pending" and now - alert.window_start > (rule.window_seconds or 0):
            alert.window_start, alert.window_count = now, 0
        alert.window_count += n
        alert.count += n
        alert.last_seen = now
        if detail is not None:
            alert.detail = detail[:500]
        dirty[identity] = alert
        self._check(alert, rule, now)

    def _check(self, alert: Alert, rule: AlertRule, now: float) -> None:
        if alert.state == "pending":
            if alert.window_count >= (rule.threshold or 1) and now - alert.first_seen >= (rule.for_seconds or 0):
                alert.state, alert.fired_at = "firing", now
                self._notify(alert, "firing", now)
        elif alert.state == "firing" and now - (alert.notified_at or 0) >= (rule.repeat_seconds or 0):
            self._notify(alert, "repeat", now)

    def _resolve(self, key: tuple[str, str, str], now: float, dirty: dict[Identity, Alert]) -> None:
        assert self._active is not None
        for identity, alert in list(self._active.items()):
            if (identity[0], identity[1], identity[3]) != key:
                continue
            rule = self._rule(alert.cls)
            # Damping: a success only counts once problems have stopped for a while, longer for
            # an alert that keeps coming back.
            hold = (rule.resolve_hold_seconds or 0) * 2 ** min(alert.flaps, 4)
            if now - alert.last_seen < hold:
                continue
            self._end(identity, alert, "ok", now, dirty)

    def _end(self, identity: Identity, alert: Alert, why: str, now: float, dirty: dict[Identity, Alert]) -> None:
        assert self._active is not None
        if alert.state == "firing":
            alert.state, alert.resolved_at = "resolved", now
            self._notify(alert, "resolved", now, reason=why)
        else:
            alert.state = "inactive"
        dirty[identity] = alert
        del self._active[identity]

    def _sweep(self, now: float, dirty: dict[Identity, Alert]) -> None:
        assert self._active is not None
        for identity, alert in list(self._active.items()):
            rule = self._rule(alert.cls)
            if alert.state == "firing" and rule.quiet_seconds and now - alert.last_seen >= rule.quiet_seconds:
                self._end(identity, alert, "quiet", now, dirty)
            elif (
                alert.state == "pending"
                and not rule.for_seconds
                and (now - alert.window_start > (rule.window_seconds or 0))
            ):
                self._end(identity, alert, "expired", now, dirty)
            else:
                before = len(self._out)
                self._check(alert, rule, now)
                if len(self._out) > before:
                    dirty[identity] = alert

    def _notify(self, alert: Alert, transition: str, now: float, reason: str | None = None) -> None:
        alert.notified_at = now
        entry = classify(alert.code)
        snapshot = {k: v for k, v in asdict(alert).items() if k not in ("window_start", "window_count")}
        for name in TIMES:
            if snapshot.get(name) is not None:
                snapshot[name] = iso(snapshot[name])
        snapshot["class"] = snapshot.pop("cls")
        snapshot.update(meaning=entry.meaning, advice=entry.advice, condition=entry.condition,
                        flapping=alert.flaps > 0, reason=reason)  # fmt: skip
        self._out.append(Transition(alert, transition, snapshot))
