"""The event parser: the contract's rules, and properties that hold for any input (hypothesis)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events import KINDS, InvalidEvent, normalise_ts, parse_event

TS = "2026-11-22T10:00:00.123Z"
LIMIT = 65536


def attrs(**over: str) -> dict[str, str]:
    base = {"id": "9af5adcc-0001", "kind": "activity", "app": "demo", "ts": TS}
    base.update(over)
    return {k: v for k, v in base.items() if v != "<drop>"}


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("activity", {"device_id": "d"}),
        ("crash", {"device_id": "d", "name": "x"}),
        ("device", {"device_id": "d", "model": "m"}),
        ("tag", {"device_id": "d", "name": "plan", "value": 3}),
        ("token", {"device_id": "d", "token": "t", "valid": False}),
        ("push", {"device_id": "d", "campaign_id": "c", "action": "exited"}),
        ("api", {"api": "reach", "status": 403, "latency_ms": 8, "method": "POST"}),
    ],
)
def test_valid_events_of_every_kind(kind: str, payload: dict[str, object]) -> None:
    """A well-formed event of each kind parses, keeping its payload and original text."""
    text = orjson.dumps(payload).decode()
    event = parse_event(attrs(kind=kind), text, LIMIT)
    assert (event.kind, event.payload, event.text, event.ts) == (kind, payload, text, TS)


@pytest.mark.parametrize(
    ("over", "text", "reason"),
    [
        ({"id": "<drop>"}, '{"device_id":"d"}', "attribute id is missing"),
        ({"id": ""}, '{"device_id":"d"}', "attribute id is empty"),
        ({"id": "x" * 129}, '{"device_id":"d"}', "attribute id is malformed"),
        ({"id": "a b"}, '{"device_id":"d"}', "attribute id is malformed"),
        ({"kind": "<drop>"}, '{"device_id":"d"}', "attribute kind is missing"),
        ({"kind": "telemetry"}, '{"device_id":"d"}', "unknown kind"),
        ({"app": "<drop>"}, '{"device_id":"d"}', "attribute app is missing"),
        ({"ts": "yesterday"}, '{"device_id":"d"}', "not an RFC 3339 UTC time"),
        ({"ts": "2026-11-22T10:00:00+02:00"}, '{"device_id":"d"}', "not an RFC 3339 UTC time"),
        ({"ts": "2026-02-30T10:00:00Z"}, '{"device_id":"d"}', "not a valid date"),
        ({}, "", "payload is empty"),
        ({}, "{not json", "not valid JSON"),
        ({}, "[1, 2]", "JSON list, not an object"),
        ({}, "42", "JSON int, not an object"),
        ({}, '{"device_id": 7}', "non-empty string device_id"),
        ({}, '{"device_id": "' + "d" * 600 + '"}', "longer than 512"),
        ({}, "[" * 5000 + "]" * 5000, "not valid JSON"),
        ({"kind": "api"}, '{"api": "reach", "status": "500"}', "integer HTTP status"),
        ({"kind": "api"}, '{"api": "reach", "status": 99}', "integer HTTP status"),
        ({"kind": "api"}, '{"api": "reach", "status": true}', "integer HTTP status"),
        ({"kind": "tag"}, '{"device_id": "d", "value": 1}', "name or a tags object"),
        ({"kind": "tag"}, '{"device_id": "d", "tags": ["plan"]}', "tags must be a non-empty object"),
        ({"kind": "tag"}, '{"device_id": "d", "tags": {}}', "tags must be a non-empty object"),
        ({"kind": "tag"}, '{"device_id": "d", "tags": {"": 1}}', "tags names must be"),
        ({"kind": "tag"}, '{"tags": {"plan": "gold"}}', "non-empty string device_id"),
        ({"kind": "token"}, '{"device_id": "d", "token": "t", "valid": "yes"}', "boolean valid"),
        ({"kind": "push"}, '{"device_id": "d", "campaign_id": "c"}', "non-empty string action"),
        ({"kind": "push"}, '{"device_id": "d", "campaign_id": "c", "action": 3}', "non-empty string action"),
    ],
)
def test_contract_violations_have_a_reason(over: dict[str, str], text: str, reason: str) -> None:
    """Each way of breaking the contract raises InvalidEvent with a reason that says which."""
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(attrs(**over), text, LIMIT)


@pytest.mark.parametrize(
    ("kind", "payload", "drift"),
    [
        ("push", {"device_id": "d", "campaign_id": "c", "action": "clicked"}, [("push.action", "clicked")]),
        ("push", {"device_id": "d", "campaign_id": "c", "action": "exited"}, None),
        ("tag", {"device_id": "d", "name": "n", "value": [1]}, [("tag.value", "array")]),
        ("tag", {"device_id": "d", "tags": {"plan": "gold", "tier": "2"}}, None),
        (
            "tag",
            {"device_id": "d", "tags": {"a": {"b": 1}, "c": [2]}},
            [("tag.value", "array"), ("tag.value", "object")],
        ),
        ("tag", {"device_id": "d", "name": "plan", "value": "gold", "tags": {"tier": 2}}, None),
    ],
)
def test_drift_is_stored_not_quarantined(kind: str, payload: dict[str, object], drift: object) -> None:
    """A value outside a known set (a push action, a tag value's shape) is valid, with its drift listed."""
    event = parse_event(attrs(kind=kind), orjson.dumps(payload).decode(), LIMIT)
    assert (event.payload, event.drift) == (payload, drift)


def test_tag_values_of_a_name_and_a_tags_map() -> None:
    """A tag event's rows: its name, then one per entry of its tags map."""
    from agent.events import tag_values

    payload = {"device_id": "d", "name": "plan", "value": "gold", "tags": {"tier": "2", "beta": True}}
    assert tag_values(payload) == [("plan", "gold"), ("tier", "2"), ("beta", True)]
    assert tag_values({"device_id": "d", "tags": {"x": None}}) == [("x", None)]


def test_payload_size_limit_counts_bytes() -> None:
    """The size limit is in bytes: multi-byte characters count for what they weigh."""
    text = orjson.dumps({"device_id": "d", "x": "é" * 40}).decode()
    assert len(text) < 80 < len(text.encode())
    with pytest.raises(InvalidEvent, match="larger than 80 bytes"):
        parse_event(attrs(), text, 80)


def test_timestamps_are_normalised_to_milliseconds() -> None:
    """Any fraction length becomes exactly three digits, so text order is time order."""
    assert normalise_ts("2026-11-22T10:00:00Z") == "2026-11-22T10:00:00.000Z"
    assert normalise_ts("2026-11-22T10:00:00.5+00:00") == "2026-11-22T10:00:00.500Z"
    assert normalise_ts("2026-11-22T10:00:00.123456789Z") == "2026-11-22T10:00:00.123Z"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    event_id=st.text(max_size=140),
    kind=st.sampled_from(sorted(KINDS)) | st.text(max_size=12),
    app=st.text(max_size=140),
    ts=st.text(max_size=40) | st.just(TS),
    text=st.text(max_size=300) | json_values.map(lambda v: orjson.dumps(v).decode()),
)
def test_parser_never_fails_otherwise(event_id: str, kind: str, app: str, ts: str, text: str) -> None:
    """For any attributes and text, the parser returns a valid Event or raises InvalidEvent, nothing else."""
    try:
        event = parse_event({"id": event_id, "kind": kind, "app": app, "ts": ts}, text, 1024)
    except InvalidEvent as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    assert event.kind in KINDS and event.event_id == event_id and isinstance(event.payload, dict)
    assert len(event.text.encode()) <= 1024 and len(event.ts) == 24


@settings(max_examples=200, deadline=None)
@given(payload=st.fixed_dictionaries({"device_id": st.text(min_size=1, max_size=50)}, optional={"x": json_values}))
def test_valid_history_payloads_round_trip(payload: dict[str, object]) -> None:
    """Any object with a non-empty device_id is a valid activity, stored byte for byte as sent."""
    text = orjson.dumps(payload).decode()
    event = parse_event(attrs(), text, LIMIT)
    assert event.text == text and orjson.loads(event.text) == payload
