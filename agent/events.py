"""Validation of Monitor API events (DESIGN §3) into records the store can write.

This is the hot path: it runs once per streamed event, so it works on plain attribute dicts and
strings and returns tuples, with one JSON decode per event and no model objects.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

import orjson

HISTORY_KINDS: Final = frozenset({"activity", "event", "job", "error", "crash"})
STATE_KINDS: Final = frozenset({"device", "tag", "token", "push"})
KINDS: Final = HISTORY_KINDS | STATE_KINDS | {"api"}
#: The push actions the contract names. Another action is schema drift: stored as received, counted.
PUSH_ACTIONS: Final = frozenset({"received", "displayed", "actioned", "exited"})

MAX_ID = 128
MAX_APP = 128
MAX_FIELD = 512

_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_APP = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# RFC 3339 in UTC: the contract says UTC, so any other offset is refused rather than converted.
_TS = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(?:Z|\+00:00)")


class InvalidEvent(ValueError):
    """An event that breaks the contract; ``reason`` is what goes into the quarantine table."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x on this hot path
class Event:
    """One valid event: attributes, normalised timestamp, decoded payload and its original text.

    ``drift`` lists the (``kind.field``, value) pairs outside the contract's known sets: the event
    is stored as received all the same, and the store counts and records each drifting value.
    """

    event_id: str
    kind: str
    app: str
    ts: str
    payload: dict[str, Any]
    text: str
    drift: list[tuple[str, str]] | None = None


@functools.lru_cache(maxsize=8192)
def normalise_ts(value: str) -> str:
    """Return ``value`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` or raise InvalidEvent.

    One fixed width keeps text order equal to time order, which the (ts, event_id) index relies on.
    Cached: the events of a stanza, and of a busy second, share their timestamps.
    """
    match = _TS.fullmatch(value)
    if match is None:
        raise InvalidEvent(f"attribute ts is not an RFC 3339 UTC time: {value[:40]!r}")
    seconds, fraction = match.groups()
    if not (_valid_date(seconds[:10]) and seconds[11:13] < "24" and seconds[14:16] < "60"
            and seconds[17:19] < "61"):  # fmt: skip
        raise InvalidEvent(f"attribute ts is not a valid date: {value[:40]!r}")
    millis = ((fraction or "") + "000")[:3]
    return f"{seconds}.{millis}Z"


@functools.lru_cache(maxsize=256)
def _valid_app(app: str) -> bool:
    # A stream carries a handful of apps: check each once.
    return _APP.fullmatch(app) is not None


@functools.lru_cache(maxsize=64)
def _valid_date(day: str) -> bool:
    # Events of one stream share a handful of dates, so the calendar check is cached.
    try:
        date.fromisoformat(day)
    except ValueError:
        return False
    return True


def iso(epoch: float) -> str:
    """Epoch seconds in the store's format, ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def epoch(text: str) -> float:
    """The inverse of :func:`iso`."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def utc_now() -> str:
    """The current time in the store's timestamp format."""
    return iso(time.time())


def _attribute(attrs: dict[str, str], name: str, pattern: re.Pattern[str]) -> str:
    value = attrs.get(name)
    if value is not None and pattern.fullmatch(value) is not None:
        return value
    if value is None:
        raise InvalidEvent(f"attribute {name} is missing")
    if not value:
        raise InvalidEvent(f"attribute {name} is empty")
    raise InvalidEvent(f"attribute {name} is malformed: {value[:40]!r}")


def _string(payload: dict[str, Any], name: str, kind: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{kind} payload needs a non-empty string {name}")
    if len(value) > MAX_FIELD:
        raise InvalidEvent(f"{kind} payload field {name} is longer than {MAX_FIELD} characters")
    return value


def parse_event(attrs: dict[str, str], text: str | None, max_payload_bytes: int) -> Event:
    """Validate one ``<event/>`` element's attributes and text, or raise InvalidEvent."""
    event_id = _attribute(attrs, "id", _ID)
    kind = attrs.get("kind")
    if not kind:
        raise InvalidEvent("attribute kind is missing")
    if kind not in KINDS:
        raise InvalidEvent(f"unknown kind {kind[:40]!r}")
    app = attrs.get("app")
    if app is None or not _valid_app(app):
        app = _attribute(attrs, "app", _APP)  # raises with the precise reason
    ts = normalise_ts(attrs.get("ts") or "")
    if not text:
        raise InvalidEvent("payload is empty")
    # A character is 1 to 4 bytes in UTF-8: encode only when the length alone cannot decide.
    size = len(text)
    if size > max_payload_bytes or (size * 4 > max_payload_bytes and len(text.encode()) > max_payload_bytes):
        raise InvalidEvent(f"payload is larger than {max_payload_bytes} bytes")
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"payload is not valid JSON: {str(exc)[:80]}") from None
    if type(payload) is not dict:
        raise InvalidEvent(f"payload is a JSON {type(payload).__name__}, not an object")
    if kind in HISTORY_KINDS:  # the common case, inline
        device = payload.get("device_id")
        if type(device) is not str or not device or len(device) > MAX_FIELD:
            _string(payload, "device_id", kind)  # raises with the precise reason
        return Event(event_id, kind, app, ts, payload, text)
    return Event(event_id, kind, app, ts, payload, text, _check_kind(kind, payload))


def _check_kind(kind: str, payload: dict[str, Any]) -> list[tuple[str, str]] | None:
    """Raise InvalidEvent when the event cannot be keyed or stored; return its drift, if any."""
    if kind == "api":
        _string(payload, "api", kind)
        status = payload.get("status")
        if type(status) is not int or not 100 <= status <= 599:
            raise InvalidEvent("api payload needs an integer HTTP status between 100 and 599")
        latency = payload.get("latency_ms")
        if latency is not None and (type(latency) is not int or latency < 0):
            raise InvalidEvent("api payload field latency_ms must be a non-negative integer")
        for name in ("method", "path", "request_id", "detail"):
            value = payload.get(name)
            if value is not None and not isinstance(value, str):
                raise InvalidEvent(f"api payload field {name} must be a string")
        return None
    _string(payload, "device_id", kind)
    if kind == "tag":
        return _check_tag(payload)
    if kind == "token":
        _string(payload, "token", kind)
        if type(payload.get("valid")) is not bool:
            raise InvalidEvent("token payload needs a boolean valid")
    elif kind == "push":
        _string(payload, "campaign_id", kind)
        action = _string(payload, "action", kind)
        if action not in PUSH_ACTIONS:
            return [("push.action", action)]
    return None


def _check_tag(payload: dict[str, Any]) -> list[tuple[str, str]] | None:
    """A tag event names one tag (``name``, ``value``) or carries a ``tags`` map, or both.

    A value that is an object or a list is drift: the contract says scalar, but it is stored as
    its JSON text, like any other value.
    """
    name, tags = payload.get("name"), payload.get("tags")
    if name is None and tags is None:
        raise InvalidEvent("tag payload needs a non-empty string name or a tags object")
    values = []
    if name is not None:
        _string(payload, "name", "tag")
        values.append(payload.get("value"))
    if tags is not None:
        if type(tags) is not dict or not tags:
            raise InvalidEvent("tag payload field tags must be a non-empty object of name: value")
        for key in tags:
            if not key or len(key) > MAX_FIELD:
                raise InvalidEvent(f"tag payload tags names must be 1 to {MAX_FIELD} characters")
        values.extend(tags.values())
    shapes = sorted({"object" if type(v) is dict else "array" for v in values if isinstance(v, dict | list)})
    return [("tag.value", shape) for shape in shapes] or None


def tag_values(payload: dict[str, Any]) -> list[tuple[str, Any]]:
    """The (name, value) pairs of a valid tag event: its ``name`` and each entry of its ``tags``."""
    pairs = [(payload["name"], payload.get("value"))] if payload.get("name") is not None else []
    tags = payload.get("tags")
    if tags:
        pairs.extend(tags.items())
    return pairs


def dumps_value(value: Any) -> str | None:
    """A tag value as stored: JSON text, or NULL for null."""
    return None if value is None else orjson.dumps(value).decode()
