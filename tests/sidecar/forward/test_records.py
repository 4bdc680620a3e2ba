"""Forwarding's pure parts: its settings (one line per mistake), subjects, message ids, bodies, positions."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import load_settings
from agent.exceptions import ConfigError
from agent.sidecar.forward.forwarder import default_account
from agent.sidecar.forward.records import Shaper, covers, decode_position, encode_position, headers_size, token
from agent.sidecar.forward.stream import client_options
from agent.store.changes import Record


def test_defaults_are_off_and_the_issue_s() -> None:
    """No URL: forwarding is off; the stream, subject, window and lag limit are the documented defaults."""
    settings = load_settings(None, xmpp={"jid": "ops.team@example.net"})
    cfg = settings.forward
    assert not cfg.enabled
    assert (cfg.stream, cfg.subject, cfg.duplicate_window, cfg.replicas) == (
        "XMPPMON",
        "xmppmon.{account}.{app}.{kind}",
        3600,
        3,
    )
    assert (
        default_account(settings) == "ops.team" and Shaper(default_account(settings), cfg.subject).account == "ops_team"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nats_urls": ["http://x:4222"]}, "XMPPMON_FORWARD__NATS_URLS: 'http://x:4222' is not a NATS server URL"),
        ({"subject": "x.{acount}.{kind}"}, "XMPPMON_FORWARD__SUBJECT: unknown placeholder {acount}"),
        ({"subject": "x..{kind}"}, "is not a NATS subject"),
        ({"stream": "A.B"}, "XMPPMON_FORWARD__STREAM: 'A.B' is not a stream name"),
        ({"replicas": 7}, "XMPPMON_FORWARD__REPLICAS"),
        ({"ca_file": "/nonexistent/ca.pem"}, "XMPPMON_FORWARD__CA_FILE: CA file /nonexistent/ca.pem does not exist"),
    ],
)
def test_bad_settings_are_one_line(values: dict[str, object], message: str) -> None:
    """Each mistake in XMPPMON_FORWARD__… is one line naming the setting."""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, forward=values)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_credentials_are_a_token_or_a_creds_file() -> None:
    """A .creds text goes to nats-py as raw credentials (JWT and seed), anything else as a token; tls:// verifies."""
    creds = "-----BEGIN NATS USER JWT-----\neyJ0eXAi\n------END NATS USER JWT------\n"
    as_creds = client_options(
        load_settings(None, forward={"nats_urls": ["tls://h:4222"], "credentials": creds}).forward
    )
    assert str(as_creds["user_credentials"]) == creds and "token" not in as_creds
    assert as_creds["tls"].verify_mode.name == "CERT_REQUIRED" and as_creds["tls"].check_hostname
    as_token = client_options(
        load_settings(None, forward={"nats_urls": ["nats://h:4222"], "credentials": " s3cret\n"}).forward
    )
    assert as_token == {"token": "s3cret"}


def record(source: int = 0, kind: str = "activity", app: str = "my.app", body: str = '{"a":[1,{"b":null}]}') -> Record:
    return Record(source, 42, "e-1", app, kind, "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.010Z", body,
                  "firing" if source == 3 else None)  # fmt: skip


def test_subject_id_and_body() -> None:
    """Tokens are made subject-safe; the body embeds the stored JSON as JSON, with its metadata."""
    shaper = Shaper("acct", "xmppmon.{account}.{app}.{kind}")
    rec = record()
    assert shaper.subject(rec) == "xmppmon.acct.my_app.activity"
    assert shaper.msg_id(rec) == "xmppmon:acct:events:42" and shaper.ours("xmppmon:acct:events:1")
    assert not shaper.ours("xmppmon:other:events:1") and not shaper.ours(None)
    body = orjson.loads(shaper.body(rec, shaper.msg_id(rec)))
    assert body == {"id": "xmppmon:acct:events:42", "account": "acct", "source": "events", "seq": 42,
                    "kind": "activity", "app": "my.app", "event_id": "e-1", "ts": "2026-01-01T00:00:00.000Z",
                    "received_at": "2026-01-01T00:00:00.010Z", "payload": {"a": [1, {"b": None}]}}  # fmt: skip
    alert = orjson.loads(shaper.body(record(3, "alert"), "x"))
    assert alert["key"] == "e-1" and alert["transition"] == "firing" and alert["alert"] == {"a": [1, {"b": None}]}
    assert orjson.loads(shaper.body(record(2, "tag"), "x"))["state"] == {"a": [1, {"b": None}]}
    assert shaper.stream_subjects() == ["xmppmon.acct.*.*"]
    assert Shaper("a", "ev.{account}-{app}.{kind}").stream_subjects() == ["ev.*.*"]


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("xmppmon.>", "xmppmon.acct.*.*", True),
        ("xmppmon.acct.*.*", "xmppmon.acct.*.*", True),
        ("xmppmon.*.*.*", "xmppmon.acct.*.*", True),
        ("xmppmon.acct.demo.*", "xmppmon.acct.*.*", False),
        ("other.>", "xmppmon.acct.*.*", False),
        ("xmppmon.acct.*", "xmppmon.acct.*.*", False),
        ("xmppmon.acct.>", "xmppmon.acct", False),
    ],
)
def test_covers(pattern: str, subject: str, expected: bool) -> None:
    """A stream's subject takes ours only if it matches every subject ours can be."""
    assert covers(pattern, subject) is expected


@given(st.tuples(*[st.integers(0, 2**62)] * 4))
def test_position_round_trip(position: tuple[int, int, int, int]) -> None:
    """The Xmppmon-Position header decodes to the position it encodes; foreign text decodes to None."""
    assert decode_position(encode_position(position)) == position
    assert decode_position("events=1") is None and decode_position(None) is None


def test_headers_size_counts_what_the_client_writes() -> None:
    """headers_size equals the length of the NATS/1.0 block nats-py sends (what max_payload counts)."""
    headers = {"Nats-Msg-Id": "xmppmon:acct:events:1", "Xmppmon-Position": "events=1"}
    block = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    assert headers_size(headers) == len(block)
    assert token("") == "_" and token("a b.c*>") == "a_b_c__"
