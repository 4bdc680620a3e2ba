"""What one record becomes on the wire: its subject, its ``Nats-Msg-Id``, its JSON body and headers. Pure.

Every message carries, besides ``Nats-Msg-Id`` (the record's identity: account, source, id):

* ``Nats-Expected-Last-Sequence``: the stream sequence the previous message of this forwarder got.
  JetStream stores a message only if the stream's last sequence is that one, so the stream always
  holds an unbroken prefix of what was sent: a lost publish makes every later one fail instead of
  landing out of order, and a stale re-send can never be stored twice, window or no window.
* ``Xmppmon-Position``: the forwarder's position after this record (the last id of each source),
  which is how a new process finds, from the stream's last message, exactly where to resume.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from agent.store.changes import SOURCES, Position, Record

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
POSITION = "Xmppmon-Position"
_BODY_FIELD = ("payload", "payload", "state", "alert")
_UNSAFE = re.compile(r"[\s.*>]")


def token(text: str) -> str:
    """``text`` usable as one subject token: '.', '*', '>' and spaces become '_' (empty: '_')."""
    return _UNSAFE.sub("_", text) or "_"


def encode_position(position: Position) -> str:
    # Spelled out: this runs once per message, and the generic join costs several times more.
    e, a, s, n = position
    return f"events={e} api_calls={a} state_changes={s} notifications={n}"


def decode_position(text: str | None) -> Position | None:
    """The position a ``Xmppmon-Position`` header holds, or None when it is not one of ours."""
    if not text:
        return None
    try:
        values = dict(part.split("=", 1) for part in text.split())
        return (int(values[SOURCES[0]]), int(values[SOURCES[1]]), int(values[SOURCES[2]]), int(values[SOURCES[3]]))
    except (KeyError, ValueError):
        return None


def advance(position: Position, record: Record) -> Position:
    """The position just after ``record``."""
    e, a, s, n = position
    source = record.source
    if source == 0:
        return (record.id, a, s, n)
    if source == 1:
        return (e, record.id, s, n)
    if source == 2:
        return (e, a, record.id, n)
    return (e, a, s, record.id)


def headers_size(headers: dict[str, str]) -> int:
    """Bytes of the ``NATS/1.0`` header block as the client writes it (counted in max_payload)."""
    size = 12  # "NATS/1.0\r\n" and the closing "\r\n"
    for k, v in headers.items():
        size += len(k) + len(v) + 4  # "k: v\r\n"
    return size


class Shaper:
    """Turns records into (subject, message id, body) for one account and subject template."""

    def __init__(self, account: str, template: str) -> None:
        self.account = token(account)
        self.template = template
        self._subjects: dict[tuple[str, str], str] = {}
        self.id_prefix = f"xmppmon:{self.account}:"

    def subject(self, record: Record) -> str:
        key = (record.app, record.kind)
        subject = self._subjects.get(key)
        if subject is None:
            subject = self.template.format(account=self.account, app=token(record.app), kind=token(record.kind))
            if len(self._subjects) < 10_000:
                self._subjects[key] = subject
        return subject

    def msg_id(self, record: Record) -> str:
        return f"{self.id_prefix}{SOURCES[record.source]}:{record.id}"

    def body(self, record: Record, msg_id: str) -> bytes:
        """The JSON message: the record's metadata and its stored JSON, embedded as it is."""
        message: dict[str, Any] = {
            "id": msg_id,
            "account": self.account,
            "source": SOURCES[record.source],
            "seq": record.id,
            "kind": record.kind,
            "app": record.app,
            "event_id" if record.transition is None else "key": record.ident,
            "ts": record.ts,
            "received_at": record.received_at,
            _BODY_FIELD[record.source]: orjson.Fragment(record.body),
        }
        if record.transition is not None:
            message["transition"] = record.transition
        return orjson.dumps(message)

    def stream_subjects(self) -> list[str]:
        """The subject filter of a stream created for this account: placeholders other than {account} as '*'."""
        tokens = []
        for part in self.template.split("."):
            if "{app}" in part or "{kind}" in part:
                tokens.append("*")
            else:
                tokens.append(part.format(account=self.account))
        return [".".join(tokens)]

    def ours(self, msg_id: str | None) -> bool:
        return bool(msg_id) and str(msg_id).startswith(self.id_prefix)


def covers(pattern: str, subject: str) -> bool:
    """Whether the stream subject ``pattern`` takes every subject that ``subject`` (which may hold '*') can be."""
    want, have = subject.split("."), pattern.split(".")
    for i, part in enumerate(have):
        if part == ">":
            return len(want) > i
        if i >= len(want):
            return False
        if part != "*" and part != want[i]:
            return False
    return len(want) == len(have)
