"""Unit tests of the Monitor API emulator's pure parts: payloads, defects, XML text, pacing."""

from __future__ import annotations

import argparse
import json
import random
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.exceptions import ConfigError
from agent.lab.emulator.component import decide
from agent.lab.emulator.options import EmulatorOptions, EmulatorReport, add_arguments, options_from_args
from agent.lab.emulator.stream import Pacer, Streamer
from agent.lab.emulator.wire import (
    CONDITIONS,
    DEFECTS,
    KINDS,
    NAMESPACE,
    OVERSIZE,
    PUSH_ACTIONS,
    EventFactory,
    event_xml,
    iq_reply_xml,
    make_payload,
    message_xml,
    utc_ts,
    uuid4_text,
)

NS = f"{{{NAMESPACE}}}"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def check_valid(kind: str, payload: dict[str, Any]) -> None:
    """The validation rules of DESIGN.md §3, as the agent applies them."""
    assert isinstance(payload, dict)
    if kind == "api":
        assert {"api", "method", "path", "status", "request_id", "latency_ms", "detail"} <= set(payload)
        assert type(payload["status"]) is int and type(payload["latency_ms"]) is int
        assert all(isinstance(payload[k], str) for k in ("api", "method", "path", "detail"))
        return
    assert isinstance(payload["device_id"], str) and payload["device_id"]
    if kind == "tag":
        assert isinstance(payload["name"], str)
        assert isinstance(payload["value"], str | int | float | bool)
    elif kind == "token":
        assert isinstance(payload["token"], str) and type(payload["valid"]) is bool
    elif kind == "push":
        assert isinstance(payload["campaign_id"], str) and payload["action"] in PUSH_ACTIONS
    elif kind == "device":
        assert {"model", "locale", "timezone", "first_seen"} <= set(payload)
    elif kind == "activity":
        assert {"session_id", "name", "duration_ms"} <= set(payload)
    elif kind == "crash":
        assert {"name", "stack"} <= set(payload)
    else:
        assert {"name", "session_id", "extras"} <= set(payload)


@pytest.mark.parametrize("kind", KINDS)
def test_payloads_satisfy_the_contract(kind: str) -> None:
    """Every generated payload of every kind satisfies the contract's rules and is JSON."""
    rng = random.Random(7)
    for _ in range(200):
        payload = make_payload(kind, rng)
        check_valid(kind, json.loads(json.dumps(payload)))


def test_kinds_are_the_contracts_ten() -> None:
    """The default kinds are exactly DESIGN.md §3's history, state and api kinds."""
    assert set(KINDS) == {
        "activity", "event", "job", "error", "crash", "device", "tag", "token", "push", "api",
    }  # fmt: skip


def test_api_status_is_a_realistic_mix_or_forced() -> None:
    """Api statuses are mostly 200/201 with some errors, and --api-status forces every one."""
    rng = random.Random(1)
    statuses = [make_payload("api", rng)["status"] for _ in range(2000)]
    ok = sum(s in (200, 201) for s in statuses)
    assert 0.75 * len(statuses) < ok < len(statuses)
    assert any(s >= 500 for s in statuses) and any(400 <= s < 500 for s in statuses)
    assert {make_payload("api", rng, api_status=504)["status"] for _ in range(50)} == {504}


def test_unknown_kind_is_refused() -> None:
    """Asking for a payload of an unknown kind is a programming error, not a silent default."""
    with pytest.raises(ValueError, match="unknown event kind"):
        make_payload("telemetry", random.Random())


def test_uuid4_text_is_a_version_4_uuid_and_seeded() -> None:
    """Ids are well-formed version-4 UUIDs, reproducible from a seed and unique in practice."""
    ids = [uuid4_text(random.Random(3)) for _ in range(2)]
    assert ids[0] == ids[1] and UUID4.match(ids[0])
    rng = random.Random()
    many = {uuid4_text(rng) for _ in range(10_000)}
    assert len(many) == 10_000 and all(UUID4.match(i) for i in many)


def test_valid_events_parse_and_carry_all_attributes() -> None:
    """A factory event is one namespaced <event/> with id, kind, app, ts and a valid payload."""
    factory = EventFactory(EmulatorOptions(seed=5))
    ts = utc_ts(1_795_000_000.123)
    for _ in range(100):
        eid, kind, xml = factory.valid("my-app", ts)
        elem = ET.fromstring(xml)
        assert elem.tag == f"{NS}event"
        assert elem.attrib == {"id": eid, "kind": kind, "app": "my-app", "ts": ts}
        assert UUID4.match(eid)
        check_valid(kind, json.loads(elem.text or ""))


def test_factory_is_deterministic_under_a_seed() -> None:
    """Two factories with one seed produce the same events, so runs can be replayed."""
    a, b = EventFactory(EmulatorOptions(seed=9)), EventFactory(EmulatorOptions(seed=9))
    assert [a.valid("x", "t") for _ in range(20)] == [b.valid("x", "t") for _ in range(20)]


def defect_of(xml: str) -> str | None:
    """Which contract rule an <event/> breaks, or None if it is valid."""
    elem = ET.fromstring(xml)
    a = elem.attrib
    if "id" not in a:
        return "missing-id"
    if a["id"] == "":
        return "empty-id"
    if "kind" not in a:
        return "missing-kind"
    if a["kind"] not in KINDS:
        return "unknown-kind"
    if "app" not in a:
        return "missing-app"
    if not TS.match(a.get("ts", "")):
        return "bad-ts"
    text = elem.text or ""
    if len(text.encode()) > 64 * 1024:
        return "oversize"
    try:
        payload = json.loads(text)
    except ValueError:
        return "invalid-json"
    if isinstance(payload, list):
        return "json-list"
    if not isinstance(payload, dict):
        return "json-number"
    if a["kind"] == "api":
        return "api-status-string" if isinstance(payload.get("status"), str) else None
    return None if payload.get("device_id") else "missing-device-id"


def test_malformed_rotation_covers_every_listed_defect() -> None:
    """One rotation of malformed events breaks each listed rule once, and only that rule."""
    factory = EventFactory(EmulatorOptions(seed=2))
    ts = utc_ts(1_795_000_000.0)
    seen = []
    for _ in DEFECTS:
        name, xml = factory.malformed("demo", ts)
        assert defect_of(xml) == name
        seen.append(name)
    assert sorted(seen) == sorted(DEFECTS)
    assert {
        "invalid-json", "json-list", "json-number", "missing-id", "empty-id", "missing-kind",
        "unknown-kind", "missing-app", "bad-ts", "missing-device-id", "api-status-string",
        "oversize",
    } == set(seen)  # fmt: skip


def test_malformed_ids_never_look_like_valid_ids() -> None:
    """Malformed events either have no usable id or one that cannot collide with a UUID."""
    factory = EventFactory(EmulatorOptions(seed=4))
    ids = [ET.fromstring(factory.malformed("d", "t", allow_oversize=False)[1]).get("id")
           for _ in range(50)]  # fmt: skip
    assert all(i is None or i == "" or i.startswith("bad-") for i in ids)
    assert len([i for i in ids if i]) == len({i for i in ids if i})


def test_oversize_can_be_skipped() -> None:
    """When a stanza already holds an oversize event, the rotation skips to the next defect."""
    factory = EventFactory(EmulatorOptions())
    names = [factory.malformed("d", "t", False)[0] for _ in range(3 * len(DEFECTS))]
    assert "oversize" not in names and len(set(names)) == len(DEFECTS) - 1


def test_special_characters_round_trip_through_the_xml() -> None:
    """JSON text with < & > and quotes in attributes survive the hand-built XML unchanged."""
    text = json.dumps({"device_id": "d<&>1", "name": "a]]>b", "q": "'\""})
    xml = event_xml(NAMESPACE, {"id": "x'1\"", "kind": "tag", "app": "a&b<c>", "ts": "t"}, text)
    msg = ET.fromstring(message_xml("monitor.localhost", "agent@localhost/r&s", "m-1", [xml] * 2))
    assert msg.tag == "message" and msg.get("to") == "agent@localhost/r&s"
    events = msg.findall(f"{NS}event")
    assert len(events) == 2
    assert events[0].attrib == {"id": "x'1\"", "kind": "tag", "app": "a&b<c>", "ts": "t"}
    assert events[0].text == text
    assert msg.find("{urn:xmpp:hints}store") is not None
    assert msg.find("body") is None


def test_streamer_stanza_mixes_valid_malformed_and_duplicates() -> None:
    """A composed stanza parses, logs only valid events, and re-sends duplicates in a later one."""
    options = EmulatorOptions(batch=10, malformed=0.5, duplicates=0.3, seed=8)
    report = EmulatorReport()
    streamer = Streamer(None, options, report, None)  # type: ignore[arg-type]
    first, lines = streamer.stanza("demo", 10, 1_795_000_000.0)
    logged = [line.split("\t")[0] for line in lines]
    events = ET.fromstring(message_xml("m", "a", "1", [first])).findall(f"{NS}event")
    valid = [e.get("id") for e in events if defect_of(ET.tostring(e, encoding="unicode")) is None]
    assert valid == logged and len(logged) == 10
    assert report.events_sent == 10 and report.malformed_sent == 5
    assert len(events) == 15
    dups = list(streamer.pending_dups["demo"])
    assert len(dups) == 3
    second, lines2 = streamer.stanza("demo", 10, 1_795_000_001.0)
    ids2 = [e.get("id") for e in ET.fromstring(f"<m>{second}</m>").findall(f"{NS}event")]
    assert [ET.fromstring(d).get("id") for d in dups] == ids2[:3]
    assert set(ids2[:3]) <= set(logged)
    assert not set(logged) & {line.split("\t")[0] for line in lines2}
    assert report.duplicates_sent == 3


def test_one_oversize_event_per_stanza_at_most() -> None:
    """Many malformed events per stanza still keep at most one oversize payload in it."""
    options = EmulatorOptions(malformed=1.0)
    streamer = Streamer(None, options, EmulatorReport(), None)  # type: ignore[arg-type]
    events, _ = streamer.stanza("demo", 100, 1_795_000_000.0)
    assert OVERSIZE < len(events) < 2 * OVERSIZE


def test_utc_ts_is_rfc3339_with_milliseconds() -> None:
    """Timestamps are UTC with exactly three decimals and a Z."""
    assert utc_ts(0.5) == "1970-01-01T00:00:00.500Z"
    now = 1_795_000_000.123_9
    expected = datetime.fromtimestamp(1_795_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S.123Z")
    assert utc_ts(now) == expected


@pytest.mark.parametrize(
    ("code", "condition", "error_type"),
    [
        (400, "bad-request", "modify"), (401, "not-authorized", "auth"),
        (402, "payment-required", "auth"), (403, "forbidden", "auth"),
        (404, "item-not-found", "cancel"), (405, "not-allowed", "cancel"),
        (409, "conflict", "cancel"), (413, "policy-violation", "modify"),
        (500, "internal-server-error", "wait"), (503, "service-unavailable", "cancel"),
        (504, "remote-server-timeout", "wait"),
    ],
)  # fmt: skip
def test_condition_table_and_error_reply(code: int, condition: str, error_type: str) -> None:
    """Each refusal code maps to its XEP-0086 condition and type, carried with the legacy code."""
    assert CONDITIONS[code] == (condition, error_type)
    iq = ET.fromstring(iq_reply_xml("i'1", "monitor.localhost", "agent@localhost/x", code))
    assert iq.attrib == {
        "id": "i'1", "from": "monitor.localhost", "to": "agent@localhost/x", "type": "error",
    }  # fmt: skip
    error = iq.find("error")
    assert error is not None and error.attrib == {"type": error_type, "code": str(code)}
    assert [child.tag for child in error] == [f"{{{STANZAS_NS}}}{condition}"]


def test_result_reply() -> None:
    """A successful subscribe is answered with an empty result."""
    iq = ET.fromstring(iq_reply_xml("7", "monitor.localhost", "agent@localhost/x"))
    assert iq.get("type") == "result" and len(iq) == 0 and iq.get("id") == "7"


def test_subscribe_decisions() -> None:
    """Known app and key succeed; unknown app is 404, wrong key 401, refused apps their code."""
    apps, refuse = {"demo": "k"}, {"locked": 402, "demo2": 403}
    assert decide(apps, refuse, "demo", "k") == 200
    assert decide(apps, refuse, "nope", "k") == 404
    assert decide(apps, refuse, "demo", "sdk-key") == 401
    assert decide(apps, refuse, "demo", None) == 401
    assert decide(apps, refuse, "locked", "x") == 402
    assert decide({"demo2": "k"}, refuse, "demo2", "k") == 403
    assert decide(apps, refuse, None, "k") == 400


def test_pacer_refills_at_the_rate_and_caps_the_burst() -> None:
    """The bucket refills at rate per second, holds at most burst, and says how long to wait."""
    pacer = Pacer(rate=100.0, burst=25.0, now=0.0, initial=10.0)
    assert pacer.available(0.0) == 10
    pacer.take(10)
    assert pacer.available(0.05) == 5
    assert pacer.delay(10) == pytest.approx(0.05)
    assert pacer.available(10.0) == 25  # a long stall does not turn into a long burst
    pacer.take(25)
    assert pacer.delay(1) == pytest.approx(0.01)


def test_pacer_keeps_the_average_rate_with_coarse_sleeps() -> None:
    """Sending whatever is available after each (late) wake-up still averages the target rate."""
    pacer = Pacer(rate=5000.0, burst=1250.0, now=0.0, initial=1.0)
    now, sent = 0.0, 0
    while now < 2.0:
        n = pacer.available(now)
        pacer.take(n)
        sent += n
        now += max(pacer.delay(1), 0.001) + 0.0007  # the loop oversleeps every time
    assert sent == pytest.approx(10_000, rel=0.01)


def test_unpaced_pacer_never_waits() -> None:
    """Rate 0 means as fast as possible."""
    pacer = Pacer(rate=0.0, burst=1.0, now=0.0)
    pacer.take(10**6)
    assert pacer.available(0.0) > 10**9 and pacer.delay(10**6) == 0.0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_options_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every option reaches EmulatorOptions, with repeatable --app, --refuse and --to."""
    monkeypatch.delenv("XMPPMON_EMULATOR_SECRET", raising=False)
    args = parse([
        "--secret", "s", "--app", "a:k1", "--app", "b:k:2", "--refuse", "b=402", "--to", "x@l",
        "--to", "y@l", "--rate", "2.5", "--batch", "50", "--count", "9", "--duration", "3",
        "--kinds", "api,tag", "--malformed", "0.1", "--duplicates", "0.2", "--api-status", "504",
        "--event-log", "/tmp/e.log", "--seed", "4", "--start-delay", "1.5", "--port", "5348",
    ])  # fmt: skip
    o = options_from_args(args)
    assert o.apps == {"a": "k1", "b": "k:2"} and o.refuse == {"b": 402}
    assert o.to == ["x@l", "y@l"] and (o.rate, o.batch, o.count, o.duration) == (2.5, 50, 9, 3)
    assert o.kinds == ("api", "tag") and (o.malformed, o.duplicates) == (0.1, 0.2)
    assert o.api_status == 504 and str(o.event_log) == "/tmp/e.log"
    assert (o.seed, o.start_delay, o.port, o.secret) == (4, 1.5, 5348, "s")
    assert "k1" not in repr(o) and "'s'" not in repr(o)


def test_cli_defaults_and_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without options the demo app is served, and the secret may come from the environment."""
    monkeypatch.setenv("XMPPMON_EMULATOR_SECRET", "env-secret")
    o = options_from_args(parse([]))
    assert o.secret == "env-secret" and o.apps == {"demo": "demo-key"}
    assert (o.jid, o.port, o.batch, o.kinds) == ("monitor.localhost", 5347, 1, KINDS)
    monkeypatch.delenv("XMPPMON_EMULATOR_SECRET")
    with pytest.raises(ConfigError, match="secret"):
        options_from_args(parse([]))


@pytest.mark.parametrize(
    "argv",
    [["--refuse", "demo=418"], ["--app", "demo"], ["--kinds", "api,bogus"],
     ["--malformed", "1.5"], ["--batch", "0"], ["--batch", "5000"]],
)  # fmt: skip
def test_cli_rejects_bad_values(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad option values are usage errors, not failures later in the run."""
    with pytest.raises(SystemExit):
        parse(argv)
    assert "error" in capsys.readouterr().err
