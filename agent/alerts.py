"""The status-code catalogue (DESIGN §4) and the alert rules, evaluated inside the writer's transaction.

An alert's identity is (source, app, code, api). Observations are aggregated per identity per
batch, so a burst of 10,000 identical 504s costs one Counter key and a few SQL statements, and
yields one alert whose count is 10,000 and one ``firing`` notification. Every transition writes one
``notifications`` row, with a fresh idempotency key, in the caller's transaction.

The SQL here runs on the connection the caller passes in (the store's writer, or the sidecar's own
connection for the alerts it raises itself); nothing here opens or commits a transaction.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final

import aiosqlite
import orjson

from agent.config import AlertRule, AlertSettings
from agent.events import epoch, iso


@dataclass(frozen=True, slots=True)
class Status:
    """One catalogue entry: what a code means and what the operator should do."""

    code: str
    meaning: str
    cls: str
    severity: str | None
    advice: str
    condition: str | None = None  # the XEP-0086 condition carrying this legacy code


_S = Status
CATALOGUE: Final[dict[str, Status]] = {
    s.code: s
    for s in (
        _S("200", "success", "ok", None, "nothing to do"),
        _S("201", "account created", "ok", None, "nothing to do"),
        _S("207", "multi-status: read the per-item results", "ok", None, "check the failed items"),
        _S(
            "400",
            "invalid parameter or validation error",
            "client",
            "info",
            "check the request's parameters against the API documentation",
            "bad-request",
        ),
        _S(
            "401",
            "authentication error",
            "auth",
            "critical",
            "check the AppID and the API key — not the SDK key",
            "not-authorized",
        ),
        _S(
            "402",
            "billing lock: off quotas or bad billing state",
            "billing",
            "critical",
            "check the account's billing state and quotas",
            "payment-required",
        ),
        _S(
            "403",
            "app or API not enabled, bad access key, campaign state, e-mail conflict",
            "forbidden",
            "critical",
            "enable the app/API for this key, or check the campaign state",
            "forbidden",
        ),
        _S(
            "404",
            "app, device, campaign or project not found, or bad query JSON",
            "client",
            "warning",
            "check the AppID, the ids in the path and the query JSON",
            "item-not-found",
        ),
        _S(
            "405",
            "wrong HTTP method or read-only segment",
            "client",
            "info",
            "use the documented HTTP method; segments may be read-only",
            "not-allowed",
        ),
        _S("409", "name already tied to another device or campaign", "client", "info", "use a unique name", "conflict"),
        _S(
            "413",
            "too many device ids (limit 1,000), entity over 2 MB, or period too large",
            "client",
            "warning",
            "split the request: at most 1,000 ids, 2 MB, a shorter period",
            "request-entity-too-large",
        ),
        _S("429", "too many requests", "rate", "warning", "slow down; honour Retry-After"),
        _S(
            "500",
            "error while processing the payload",
            "server",
            "warning",
            "retry later; report the request-id if it persists",
            "internal-server-error",
        ),
        _S(
            "503",
            "analytics not computed yet, or service unavailable",
            "unavailable",
            "warning",
            "retry later: the data or the service is not ready",
            "service-unavailable",
        ),
        _S(
            "504",
            "the server could not answer in time",
            "timeout",
            "warning",
            "spread calls out over time",
            "remote-server-timeout",
        ),
        # Session health, seen by the agent.
        _S(
            "auth_failure",
            "the XMPP server refused the agent's password",
            "auth",
            "critical",
            "check XMPPMON_XMPP__JID and XMPPMON_XMPP__PASSWORD",
        ),
        _S(
            "ping_timeout",
            "the XMPP server did not answer a ping",
            "session",
            "warning",
            "check the network path to the XMPP server",
        ),
        _S(
            "disconnected",
            "the agent has been disconnected from the XMPP server",
            "disconnected",
            "critical",
            "check the XMPP server and the network; see xmppmon status",
        ),
        _S(
            "store_failing",
            "the agent cannot commit to its database (disk full, locked, I/O error)",
            "storage",
            "critical",
            "free space on the database's filesystem or release the lock; events wait on the server",
        ),
        # Raised by the sidecar itself.
        _S(
            "agent_down",
            "the agent's heartbeat is stale: it is down or stuck",
            "relay",
            "critical",
            "check systemctl status xmppmon-agent and journalctl -u xmppmon-agent",
        ),
        _S(
            "sink_failing",
            "a notification sink refuses the sidecar's credentials",
            "relay",
            "critical",
            "check the sink's token or URL in XMPPMON_SIDECAR__SINKS",
        ),
        _S(
            "dead_letter",
            "a sink rejected a notification for good",
            "relay",
            "warning",
            "read the reason in the deliveries table",
        ),
    )
}
#: XEP-0086: legacy numeric code of each XMPP error condition.
CONDITION_CODES: Final = {s.condition: s.code for s in CATALOGUE.values() if s.condition}
CONDITION_CODES.update({"conflict": "409", "not-acceptable": "406", "undefined-condition": "500"})

_R = AlertRule
DEFAULT_RULE: Final = _R(
    threshold=1,
    window_seconds=60,
    for_seconds=0,
    repeat_seconds=3600,
    quiet_seconds=900,
    resolve_hold_seconds=60,
    flap_seconds=600,
    by_class=False,
)
DEFAULT_RULES: Final[dict[str, AlertRule]] = {
    "auth": _R(threshold=1),
    "billing": _R(threshold=1),
    "forbidden": _R(threshold=1),
    "client": _R(threshold=10),
    "rate": _R(threshold=3),
    "server": _R(threshold=3),
    "unavailable": _R(threshold=3),
    "timeout": _R(threshold=3),
    "session": _R(threshold=1, resolve_hold_seconds=0),
    "disconnected": _R(threshold=1, resolve_hold_seconds=0, quiet_seconds=0),
    "relay": _R(threshold=1, resolve_hold_seconds=0, quiet_seconds=0),
    "storage": _R(threshold=1, resolve_hold_seconds=0, quiet_seconds=0),
}


def classify(code: str) -> Status:
    """The catalogue entry of a code; unknown HTTP codes fall in their range's class."""
    status = CATALOGUE.get(code)
    if status is not None:
        return status
    if code.isdigit() and 200 <= int(code) < 400:
        return Status(code, "success", "ok", None, "nothing to do")
    if code.isdigit() and 400 <= int(code) < 500:
        return Status(code, f"client error {code}", "client", "warning", "check the request")
    if code.isdigit():
        return Status(code, f"server error {code}", "server", "warning", "retry later")
    return Status(code, code.replace("_", " "), "session", "warning", "see the detail")


def effective_rules(settings: AlertSettings) -> dict[str, AlertRule]:
    """Defaults, then the class defaults, then the operator's overrides, field by field."""
    rules = {}
    for cls in set(DEFAULT_RULES) | set(settings.rules):
        merged = DEFAULT_RULE.model_dump()
        for layer in (DEFAULT_RULES.get(cls), settings.rules.get(cls)):
            if layer is not None:
                merged.update(layer.model_dump(exclude_none=True))
        if cls == "disconnected":
            merged["for_seconds"] = settings.rules.get(cls, _R()).for_seconds or (settings.disconnected_after_seconds)
        rules[cls] = AlertRule(**merged)
    return rules


Identity = tuple[str, str, str, str]  # source, app, code, api


@dataclass(frozen=True, slots=True)
class Observation:
    """One health observation (not an api event): a problem, or ``ok`` for (source, app, api)."""

    source: str
    code: str
    app: str = ""
    api: str = ""
    ok: bool = False
    detail: str | None = None


@dataclass(slots=True)
class _Alert:
    id: int | None
    source: str
    app: str
    code: str
    api: str
    cls: str
    severity: str
    state: str = "inactive"
    count: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    window_start: float = 0.0
    window_count: int = 0
    fired_at: float | None = None
    notified_at: float | None = None
    resolved_at: float | None = None
    flaps: int = 0
    detail: str | None = None


_COLUMNS: Final = tuple(f.name for f in fields(_Alert) if f.name != "id")
_TIMES: Final = frozenset({"first_seen", "last_seen", "window_start", "fired_at", "notified_at", "resolved_at"})
_SELECT: Final = "SELECT id, " + ", ".join(c.replace("cls", "class") for c in _COLUMNS) + " FROM alerts"
_INSERT: Final = (
    "INSERT INTO alerts ("
    + ", ".join(c.replace("cls", "class") for c in _COLUMNS)
    + ") VALUES ("
    + ", ".join("?" * len(_COLUMNS))
    + ") RETURNING id"
)
_UPDATE: Final = (
    "UPDATE alerts SET " + ", ".join(f"{c} = ?" for c in _COLUMNS if c not in ("source", "app",
    "code", "api", "cls")) + " WHERE id = ?"
)  # fmt: skip
_INSERT_NOTIFICATION: Final = (
    "INSERT INTO notifications (key, alert_id, transition, alert, created_at) VALUES (?, ?, ?, ?, ?)"
)


def _to_row(alert: _Alert) -> list[Any]:
    return [iso(v) if k in _TIMES and v is not None else v
            for k in _COLUMNS for v in (getattr(alert, k),)]  # fmt: skip


def _from_row(row: Any) -> _Alert:
    values = {k: (epoch(v) if k in _TIMES and v is not None else v)
              for k, v in zip(("id", *_COLUMNS), row, strict=True)}  # fmt: skip
    return _Alert(**values)  # type: ignore[arg-type]  # the columns are the dataclass's fields


@dataclass
class AlertEngine:
    """Rule evaluation with the active alerts of its own sources cached in memory.

    Only one process writes the alerts of a given source (the agent: api, subscription, session;
    the sidecar: sidecar), so the cache stays true as long as a failed transaction drops it
    (:meth:`rollback`).
    """

    settings: AlertSettings
    sources: frozenset[str]
    rules: dict[str, AlertRule] = field(init=False)
    notifications: int = 0
    _active: dict[Identity, _Alert] | None = None
    _pending: list[Observation] = field(default_factory=list)
    _inflight: list[Observation] = field(default_factory=list)
    _last_sweep: float = 0.0

    def __post_init__(self) -> None:
        self.rules = effective_rules(self.settings)

    # -- what the store calls -----------------------------------------------------------------

    def observe(self, observation: Observation) -> None:
        """Queue a health observation for the next transaction."""
        self._pending.append(observation)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def sweep_due(self, now: float | None = None) -> bool:
        return (now or time.time()) - self._last_sweep >= self.settings.sweep_seconds

    async def write(
        self,
        conn: aiosqlite.Connection,
        api_counts: Counter[tuple[str, str, int]] | None = None,
        now: float | None = None,
    ) -> None:
        """Apply this batch's api statuses and queued observations, and sweep when due.

        ``api_counts`` maps (app, api, status) to occurrences. Runs inside the caller's transaction.
        """
        if not self.settings.enabled:
            self._pending.clear()
            return
        now = time.time() if now is None else now
        self._inflight, self._pending = self._pending, []
        if self._active is None:
            await self._load(conn)
        dirty: dict[Identity, _Alert] = {}
        oks: set[tuple[str, str, str]] = set()
        for (app, api, status), n in (api_counts or {}).items():
            code = str(status)
            entry = classify(code)
            if entry.cls == "ok":
                oks.add(("api", app, api))
            else:
                await self._occur(conn, ("api", app, code, api), entry, n, None, now, dirty)
        for obs in self._inflight:  # in order: up, down, up in one batch ends up
            if obs.ok:
                self._resolve((obs.source, obs.app, obs.api), now, dirty)
            else:
                entry = classify(obs.code)
                await self._occur(conn, (obs.source, obs.app, obs.code, obs.api), entry, 1,
                                  obs.detail, now, dirty)  # fmt: skip
        for key in oks:
            self._resolve(key, now, dirty)
        if now - self._last_sweep >= self.settings.sweep_seconds:
            self._sweep(now, dirty)
            self._last_sweep = now
        await self._save(conn, dirty, now)

    def committed(self) -> None:
        self._inflight = []

    def rollback(self) -> None:
        """The transaction failed: requeue its observations and forget the cached state."""
        self._pending = self._inflight + self._pending
        self._inflight = []
        self._outbox.clear()
        self._active = None

    # -- rules ---------------------------------------------------------------------------------

    async def _load(self, conn: aiosqlite.Connection) -> None:
        marks = ", ".join("?" * len(self.sources))
        rows = await conn.execute_fetchall(
            f"{_SELECT} WHERE state IN ('pending', 'firing') AND source IN ({marks})",
            tuple(self.sources),
        )
        self._active = {}
        for row in rows:
            alert = _from_row(row)
            self._active[(alert.source, alert.app, alert.code, alert.api)] = alert

    async def _occur(self, conn: aiosqlite.Connection, identity: Identity, entry: Status, n: int,
                     detail: str | None, now: float, dirty: dict[Identity, _Alert]) -> None:  # fmt: skip
        rule = self.rules.get(entry.cls) or self.rules["server"]
        if rule.by_class:
            identity = (identity[0], identity[1], entry.cls, identity[3])
        assert self._active is not None
        alert = self._active.get(identity) or dirty.get(identity)
        if alert is None:
            source, app, code, api = identity
            rows = list(
                await conn.execute_fetchall(
                    f"{_SELECT} WHERE source = ? AND app = ? AND code = ? AND api = ?", identity
                )
            )
            alert = (
                _from_row(rows[0])
                if rows
                else _Alert(None, source, app, code, api, entry.cls, rule.severity or entry.severity or "info")
            )
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
        self._check(alert, rule, now, dirty)

    def _check(self, alert: _Alert, rule: AlertRule, now: float, dirty: dict[Identity, _Alert]) -> None:
        if alert.state == "pending":
            if alert.window_count >= (rule.threshold or 1) and now - alert.first_seen >= (rule.for_seconds or 0):
                alert.state, alert.fired_at = "firing", now
                self._notify(alert, "firing", now, dirty)
        elif alert.state == "firing" and now - (alert.notified_at or 0) >= (rule.repeat_seconds or 0):
            self._notify(alert, "repeat", now, dirty)

    def _resolve(self, key: tuple[str, str, str], now: float, dirty: dict[Identity, _Alert]) -> None:
        assert self._active is not None
        for identity, alert in list(self._active.items()):
            if (identity[0], identity[1], identity[3]) != key:
                continue
            rule = self.rules.get(alert.cls) or self.rules["server"]
            # Damping: a success only counts once problems have stopped for a while, longer for
            # an alert that keeps coming back.
            hold = (rule.resolve_hold_seconds or 0) * 2 ** min(alert.flaps, 4)
            if now - alert.last_seen < hold:
                continue
            self._end(identity, alert, "ok", now, dirty)

    def _end(self, identity: Identity, alert: _Alert, why: str, now: float,
             dirty: dict[Identity, _Alert]) -> None:  # fmt: skip
        assert self._active is not None
        if alert.state == "firing":
            alert.state, alert.resolved_at = "resolved", now
            self._notify(alert, "resolved", now, dirty, reason=why)
        else:
            alert.state = "inactive"
        dirty[identity] = alert
        del self._active[identity]

    def _sweep(self, now: float, dirty: dict[Identity, _Alert]) -> None:
        assert self._active is not None
        for identity, alert in list(self._active.items()):
            rule = self.rules.get(alert.cls) or self.rules["server"]
            if alert.state == "firing" and rule.quiet_seconds and now - alert.last_seen >= rule.quiet_seconds:
                self._end(identity, alert, "quiet", now, dirty)
            elif (
                alert.state == "pending"
                and not rule.for_seconds
                and (now - alert.window_start > (rule.window_seconds or 0))
            ):
                self._end(identity, alert, "expired", now, dirty)
            else:
                before = len(self._outbox)
                self._check(alert, rule, now, dirty)
                if len(self._outbox) > before:
                    dirty[identity] = alert

    # -- writing -------------------------------------------------------------------------------

    _outbox: list[tuple[_Alert, str, dict[str, Any]]] = field(default_factory=list)

    def _notify(self, alert: _Alert, transition: str, now: float, dirty: dict[Identity, _Alert],
                reason: str | None = None) -> None:  # fmt: skip
        alert.notified_at = now
        entry = classify(alert.code)
        snapshot = {k: v for k, v in asdict(alert).items() if k not in ("window_start", "window_count")}
        for name in _TIMES:
            if snapshot.get(name) is not None:
                snapshot[name] = iso(snapshot[name])
        snapshot["class"] = snapshot.pop("cls")
        snapshot.update(meaning=entry.meaning, advice=entry.advice, condition=entry.condition,
                        flapping=alert.flaps > 0, reason=reason)  # fmt: skip
        self._outbox.append((alert, transition, snapshot))

    async def _save(self, conn: aiosqlite.Connection, dirty: dict[Identity, _Alert], now: float) -> None:
        updates = []
        for alert in dirty.values():
            if alert.id is None:
                async with conn.execute(_INSERT, _to_row(alert)) as cursor:
                    row = await cursor.fetchone()
                assert row is not None
                alert.id = int(row[0])
            else:
                values = _to_row(alert)
                updates.append([v for k, v in zip(_COLUMNS, values, strict=True)
                                if k not in ("source", "app", "code", "api", "cls")] + [alert.id])  # fmt: skip
        if updates:
            await conn.executemany(_UPDATE, updates)
        if self._outbox:
            created = iso(now)
            rows = []
            for alert, transition, snapshot in self._outbox:
                snapshot["alert_id"] = alert.id
                rows.append((str(uuid.uuid4()), alert.id, transition, orjson.dumps(snapshot).decode(),
                             created))  # fmt: skip
            await conn.executemany(_INSERT_NOTIFICATION, rows)
            self.notifications += len(rows)
            self._outbox.clear()
