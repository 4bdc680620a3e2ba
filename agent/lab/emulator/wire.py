"""What the Monitor API emulator sends: the wire text of events and messages, valid and malformed.

Pure functions and a seeded factory, no I/O: the emulator component (``agent.lab.emulator.component``) streams
what this module builds, and the tests and benchmarks build the same bytes directly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from agent.lab.emulator.options import EmulatorOptions

NAMESPACE = "urn:xmppmon:monitor:1"
HISTORY_KINDS = ("activity", "event", "job", "error", "crash")
STATE_KINDS = ("device", "tag", "token", "push")
KINDS = (*HISTORY_KINDS, *STATE_KINDS, "api")
PUSH_ACTIONS = ("received", "displayed", "actioned", "exited")
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"

# XEP-0086 legacy code -> (defined condition, error type).
CONDITIONS: dict[int, tuple[str, str]] = {
    400: ("bad-request", "modify"),
    401: ("not-authorized", "auth"),
    402: ("payment-required", "auth"),
    403: ("forbidden", "auth"),
    404: ("item-not-found", "cancel"),
    405: ("not-allowed", "cancel"),
    409: ("conflict", "cancel"),
    # XEP-0086 has no 413; RFC 6120's policy-violation is the condition meant for "too large".
    413: ("policy-violation", "modify"),
    500: ("internal-server-error", "wait"),
    503: ("service-unavailable", "cancel"),
    504: ("remote-server-timeout", "wait"),
}

OK = 200
#: Payload size of the 'oversize' defect: over the agent's default 64 KiB limit.
OVERSIZE = 64 * 1024 + 1024


# --- XML text -------------------------------------------------------------------------------


def xml_text(text: str) -> str:
    """Escape character data; the common case (no special character) costs three scans."""
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    return text


def xml_attr(value: str) -> str:
    """Escape a value for a single-quoted attribute."""
    return xml_text(value).replace("'", "&apos;").replace('"', "&quot;")


def utc_ts(now: float) -> str:
    """RFC 3339 UTC with milliseconds and 'Z', e.g. 2026-11-22T10:00:00.123Z."""
    seconds = int(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (f".{int((now - seconds) * 1000):03d}Z")


def event_xml(ns: str, attrs: dict[str, str], text: str) -> str:
    """One ``<event/>`` element; ``attrs`` are written in order, so a test can omit any of them."""
    head = "".join(f" {name}='{xml_attr(value)}'" for name, value in attrs.items())
    return f"<event xmlns='{ns}'{head}>{xml_text(text)}</event>"


def message_xml(sender: str, to: str, msg_id: str, events: Iterable[str]) -> str:
    """A payload-only message with the hint that makes Prosody archive it (XEP-0334)."""
    return (
        f"<message from='{xml_attr(sender)}' to='{xml_attr(to)}' id='{msg_id}'>"
        f"{''.join(events)}<store xmlns='urn:xmpp:hints'/></message>"
    )


def iq_reply_xml(iq_id: str, sender: str, to: str, code: int = OK) -> str:
    """A ``result`` for OK, else an ``error`` with its XEP-0086 condition and legacy code."""
    head = f"<iq id='{xml_attr(iq_id)}' from='{xml_attr(sender)}' to='{xml_attr(to)}'"
    if code == OK:
        return head + " type='result'/>"
    condition, error_type = CONDITIONS[code]
    return (
        f"{head} type='error'><error type='{error_type}' code='{code}'><{condition} xmlns='{STANZAS_NS}'/></error></iq>"
    )


# --- events ---------------------------------------------------------------------------------


def uuid4_text(rng: random.Random) -> str:
    """A version-4 UUID drawn from ``rng`` (reproducible under a seed, faster than uuid.UUID)."""
    bits = rng.getrandbits(128)
    bits = (bits & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NAMES = {
    "activity": ("MainActivity", "Checkout", "Settings", "Search", "Profile"),
    "event": ("add_to_cart", "share", "login", "purchase", "search"),
    "job": ("sync_contacts", "upload_logs", "refresh_feed", "geo_update"),
    "error": ("network_timeout", "parse_error", "disk_full", "http_500"),
    "crash": ("NullPointerException", "SIGSEGV", "OutOfMemoryError", "NSInvalidArgument"),
}
_MODELS = ("Pixel 8", "iPhone 15", "Galaxy S23", "Moto G54", "Xperia 10")
_LOCALES = (("fr_FR", "Europe/Paris"), ("en_US", "America/New_York"), ("de_DE", "Europe/Berlin"))
_TAGS = ("plan", "age", "score", "newsletter", "city")
_CALLS = (
    ("reach", "POST", "/campaigns/{n}/activate"),
    ("reach", "GET", "/campaigns/{n}"),
    ("push", "POST", "/push/{n}"),
    ("analytics", "GET", "/analytics/sessions?period={n}d"),
    ("devices", "PUT", "/devices/d-{n}/tags"),
)
# Mostly successes, with every alerting class represented.
_STATUSES = (200,) * 70 + (201,) * 18 + (207, 400, 401, 402, 403, 404, 409, 413, 429, 500, 503, 504)
_DETAILS = {
    200: "ok",
    201: "created",
    207: "multi-status: see items",
    400: "invalid parameter 'period'",
    401: "authentication error: check the AppID and API key",
    402: "billing lock: off quotas",
    403: "campaign must be finished",
    404: "campaign not found",
    409: "name already used",
    413: "too many device ids (limit 1000)",
    429: "too many requests",
    500: "error while processing the payload",
    503: "analytics not computed yet",
    504: "server could not answer in time",
}


def make_payload(kind: str, rng: random.Random, api_status: int | None = None) -> dict[str, Any]:
    """A valid payload for ``kind`` (DESIGN.md §3), with realistic values."""
    n = int(rng.random() * 1000)
    device = f"d-{n}"
    if kind == "api":
        api, method, path = _CALLS[n % len(_CALLS)]
        status = api_status if api_status is not None else _STATUSES[n % len(_STATUSES)]
        return {
            "api": api,
            "method": method,
            "path": path.format(n=n),
            "status": status,
            "request_id": uuid4_text(rng),
            "latency_ms": 20 + int(rng.random() * 900),
            "detail": _DETAILS.get(status, f"HTTP {status}"),
        }
    if kind in HISTORY_KINDS:
        names = _NAMES[kind]
        payload: dict[str, Any] = {
            "device_id": device,
            "name": names[n % len(names)],
            "session_id": f"s-{n * 7 % 997}",
        }
        if kind == "activity":
            payload["duration_ms"] = int(rng.random() * 60_000)
        elif kind == "crash":
            payload["stack"] = f"at com.example.app.{payload['name']}(Main.java:{n % 400})"
        else:
            payload["extras"] = {"screen": _NAMES["activity"][n % 5], "value": n}
        return payload
    if kind == "device":
        locale, tz = _LOCALES[n % len(_LOCALES)]
        return {
            "device_id": device,
            "model": _MODELS[n % len(_MODELS)],
            "locale": locale,
            "timezone": tz,
            "first_seen": utc_ts(1.7e9 + n * 3600.0),
        }
    if kind == "tag":
        name = _TAGS[n % len(_TAGS)]
        value: Any = (f"v{n}", n, n / 8, n % 2 == 0)[n % 4]
        return {"device_id": device, "name": name, "value": value}
    if kind == "token":
        token = f"tok-{rng.getrandbits(64):016x}"
        return {"device_id": device, "token": token, "valid": n % 5 != 0}
    if kind == "push":
        return {
            "device_id": device,
            "campaign_id": f"c-{n % 40}",
            "action": PUSH_ACTIONS[n % len(PUSH_ACTIONS)],
        }
    raise ValueError(f"unknown event kind {kind!r}")


def _dumps(payload: Any) -> str:
    return orjson.dumps(payload).decode()


# The defects of DESIGN.md §3's validation rules, sent in this rotation. Malformed ids never
# collide with valid ones: valid ids are UUIDs, these are 'bad-', a run tag and a counter.
DEFECTS = (
    "invalid-json", "json-list", "json-number", "missing-id", "empty-id", "missing-kind",
    "unknown-kind", "missing-app", "bad-ts", "missing-device-id", "api-status-string", "oversize",
)  # fmt: skip


def malformed_event(defect: str, ns: str, eid: str, app: str, ts: str, rng: random.Random) -> str:
    """An ``<event/>`` that breaks exactly the rule named by ``defect``."""
    attrs = {"id": eid, "kind": "activity", "app": app, "ts": ts}
    payload = make_payload("activity", rng)
    text = None
    match defect:
        case "invalid-json":
            text = '{"device_id": "d-1", "name": <&>'
        case "json-list":
            text = '["d-1", 2]'
        case "json-number":
            text = "42"
        case "missing-id" | "missing-kind" | "missing-app":
            del attrs[defect.removeprefix("missing-")]
        case "empty-id":
            attrs["id"] = ""
        case "unknown-kind":
            attrs["kind"] = "telemetry"
        case "bad-ts":
            attrs["ts"] = "yesterday"
        case "missing-device-id":
            del payload["device_id"]
        case "api-status-string":
            attrs["kind"], payload = "api", make_payload("api", rng) | {"status": "500"}
        case "oversize":
            payload["padding"] = "x" * OVERSIZE
        case _:
            raise ValueError(f"unknown defect {defect!r}")
    return event_xml(ns, attrs, _dumps(payload) if text is None else text)


class EventFactory:
    """Valid events (id, kind, XML) and a rotating mix of malformed ones, from one seeded RNG."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.rng = random.Random(options.seed)
        self.ns = options.namespace
        self.kinds = options.kinds
        self.api_status = options.api_status
        self._malformed_n = 0
        self._tag = f"{self.rng.getrandbits(32):08x}"  # keeps malformed ids apart across runs

    def valid(self, app: str, ts: str) -> tuple[str, str, str]:
        """A new valid event as (id, kind, XML)."""
        rng = self.rng
        kind = self.kinds[int(rng.random() * len(self.kinds))]
        eid = uuid4_text(rng)
        text = _dumps(make_payload(kind, rng, self.api_status))
        head = f"<event xmlns='{self.ns}' id='{eid}' kind='{kind}' app='{xml_attr(app)}'"
        return eid, kind, f"{head} ts='{ts}'>{xml_text(text)}</event>"

    def malformed(self, app: str, ts: str, allow_oversize: bool = True) -> tuple[str, str]:
        """The next defect in the rotation as (defect name, XML)."""
        defect = DEFECTS[self._malformed_n % len(DEFECTS)]
        self._malformed_n += 1
        if defect == "oversize" and not allow_oversize:
            defect = DEFECTS[self._malformed_n % len(DEFECTS)]
            self._malformed_n += 1
        eid = f"bad-{self._tag}-{self._malformed_n}"
        return defect, malformed_event(defect, self.ns, eid, app, ts, self.rng)

    def sent(self) -> None:
        """Called once the stanza(s) carrying every event made since the last call were handed to
        the transport. A hook for tools that record what was sent (the chaos soak); does nothing here."""
