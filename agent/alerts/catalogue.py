"""The status-code catalogue (DESIGN §4): what each code means, its class, severity and advice,
and the default rule of each class. Data, plus the two lookups the rules need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.config import AlertRule, AlertSettings


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
            "session_conflict",
            "another client logged in with the agent's account and resource, and the two replace each other",
            "session",
            "critical",
            "run one agent per account, or give each its own XMPPMON_XMPP__RESOURCE",
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
        _S(
            "disk_low",
            "the database's file system has less free space than XMPPMON_STORE__MIN_FREE_MB",
            "storage",
            "warning",
            "free space, shorten XMPPMON_RETENTION__HISTORY_DAYS, or move the database; see xmppmon db stats",
        ),
        _S(
            "schema_drift",
            "a Monitor API event carried a value outside the contract's known set (stored as received)",
            "drift",
            "warning",
            "check the upstream's change and its consumers: SELECT * FROM schema_drift",
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
            "forward_lagging",
            "records wait longer than XMPPMON_FORWARD__MAX_LAG_SECONDS to reach the NATS JetStream cluster",
            "relay",
            "warning",
            "see forward in xmppmon status and the sidecar's log; records wait in the database, none is lost",
        ),
        _S(
            "dead_letter",
            "a sink rejected a notification for good",
            "delivery",
            "warning",
            "read the reason in delivery_state and deliveries (sink = the alert's api)",
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
    # dead_letter: nothing reports "fixed", so it resolves after an hour without a new dead letter on
    # that sink; the hold keeps a sink's recovery from sink_failing from resolving it sooner.
    "delivery": _R(threshold=1, resolve_hold_seconds=3600, quiet_seconds=3600),
    # One notification per new value (the store observes a value only the first time): firing for
    # a day, then resolved, never repeated.
    "drift": _R(threshold=1, resolve_hold_seconds=0, quiet_seconds=86400, repeat_seconds=30 * 86400),
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
