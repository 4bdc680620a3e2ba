"""journald output on the host: priorities, the native protocol's encoding, stream detection, fallbacks.

The real journald is exercised in tests/systemd_container/test_journal_container.py; here a bound
AF_UNIX datagram socket stands in for /run/systemd/journal/socket.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import socket
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from agent import journal
from agent.config import LogSettings
from agent.journal import JournalWriter, encode, is_journal_stream, prefixed, priority
from agent.logs import setup_logging


def decode(data: bytes) -> list[tuple[str, str]]:
    """The inverse of the native protocol's encoding, written from its specification."""
    fields = []
    while data:
        line, sep, rest = data.partition(b"\n")
        assert sep, f"unterminated field {data!r}"
        if b"=" in line:
            name, _, value = line.partition(b"=")
            data = rest
        else:
            (size,) = struct.unpack("<Q", rest[:8])
            name, value = line, rest[8 : 8 + size]
            assert rest[8 + size : 9 + size] == b"\n"
            data = rest[9 + size :]
        fields.append((name.decode(), value.decode()))
    return fields


class FakeJournal:
    """A datagram socket where journald's would be; entries decoded, memfd-passed ones included."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="xj-")  # sun_path is short; pytest's tmp_path may not be
        self.path = os.path.join(self.dir, "socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def entries(self) -> list[dict[str, str]]:
        out = []
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 1 << 20, 4)
            except BlockingIOError:
                return out
            for fd in fds:
                seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & seals == seals, "journald refuses unsealed memfds"
                os.lseek(fd, 0, os.SEEK_SET)  # the sender's offset comes along; journald reads it mapped
                with os.fdopen(fd, "rb") as memfd:
                    data += memfd.read()
            out.append(dict(decode(data)))

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def fake_journal() -> Iterator[FakeJournal]:
    sink = FakeJournal()
    try:
        yield sink
    finally:
        sink.close()


@pytest.fixture
def stream_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[io.TextIOWrapper]:
    """A file standing in for stderr, with $JOURNAL_STREAM naming it as systemd would."""
    with (tmp_path / "stderr").open("w+") as out:
        st = os.fstat(out.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        yield out


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    logger.remove()
    logger.configure(patcher=lambda record: None, extra={})
    logger.add(sys.stderr)
    logging.basicConfig(handlers=[], force=True)


def test_priorities_follow_sd_daemon() -> None:
    """trace/debug 7, info 6, success 5, warning 4, error and critical 3 (stdlib numbers in between round up)."""
    levels = {
        name: logger.level(name).no for name in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
    }
    assert {name: priority(no) for name, no in levels.items()} == {
        "TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 3,
    }  # fmt: skip
    assert priority(15) == 6 and priority(35) == 3


def test_prefix_goes_on_every_line() -> None:
    """journald reads each line of a stream alone, so a traceback's lines all carry the prefix."""
    assert prefixed("ERROR   x: boom\nTraceback (most recent call last):\n  ValueError\n", 3) == (
        "<3>ERROR   x: boom\n<3>Traceback (most recent call last):\n<3>  ValueError\n"
    )
    assert prefixed("", 6) == ""


def test_encoding_round_trips_including_newlines_and_binary_lengths() -> None:
    """Single-line values are KEY=value; values with a newline use the 64-bit little-endian length form."""
    fields = [("MESSAGE", "two\nlines"), ("PRIORITY", "4"), ("APP", "shop"), ("EMPTY", ""), ("EQ", "a=b")]
    data = encode(fields)
    assert data.startswith(b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nPRIORITY=4\n")
    assert decode(data) == fields


def test_journal_stream_detection(stream_file: io.TextIOWrapper, tmp_path: Path) -> None:
    """Only the stream whose device:inode $JOURNAL_STREAM names counts; others, StringIO and junk do not."""
    assert is_journal_stream(stream_file)
    with (tmp_path / "other").open("w") as other:
        assert not is_journal_stream(other)
    assert not is_journal_stream(io.StringIO())
    assert not is_journal_stream(stream_file, environ={})
    assert not is_journal_stream(stream_file, environ={"JOURNAL_STREAM": "garbage"})


def test_setup_logging_sends_priority_and_fields_natively(
    stream_file: io.TextIOWrapper, fake_journal: FakeJournal, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    """Under journald each record is one native entry with PRIORITY and the bound fields; stderr stays empty."""
    monkeypatch.setattr(journal, "SOCKET", fake_journal.path)
    setup_logging(LogSettings(level="DEBUG"), stream=stream_file, secrets=["hunter22"])
    log = logger.bind(component="sidecar")
    log.bind(app="shop", event_id="e-1", stanza_id="s-2", client_request_id="c-3", sink="webhook").warning(
        "refused with password {}", "hunter22"
    )
    log.info("plain")
    log.debug("detail")
    logging.getLogger("slixmpp.test").error("from the standard library")
    entries = fake_journal.entries()
    assert [e["PRIORITY"] for e in entries] == ["4", "6", "7", "3"]
    first = entries[0]
    assert first["MESSAGE"] == (
        "WARNING sidecar: refused with password *** [app=shop event_id=e-1 stanza_id=s-2 client_request_id=c-3 sink=webhook]"
    )
    assert {k: first[k] for k in ("APP", "EVENT_ID", "STANZA_ID", "CLIENT_REQUEST_ID", "SINK", "COMPONENT")} == {
        "APP": "shop", "EVENT_ID": "e-1", "STANZA_ID": "s-2", "CLIENT_REQUEST_ID": "c-3", "SINK": "webhook",
        "COMPONENT": "sidecar",
    }  # fmt: skip
    assert (
        first["SYSLOG_IDENTIFIER"] == "xmppmon"
        and first["CODE_FUNC"] == "test_setup_logging_sends_priority_and_fields_natively"
    )
    assert "APP" not in entries[1]
    assert entries[3]["COMPONENT"] == "slixmpp.test"
    assert not any("hunter22" in value for entry in entries for value in entry.values())
    stream_file.seek(0)
    assert stream_file.read() == ""


def test_large_entries_travel_in_a_sealed_memfd(stream_file: io.TextIOWrapper, fake_journal: FakeJournal) -> None:
    """An entry too big for one datagram is passed as a memfd, as the protocol specifies."""
    writer = JournalWriter(stream_file, fake_journal.path)
    big = "x" * 300_000  # above the maximum datagram size (EMSGSIZE)
    assert writer.send([("MESSAGE", big), ("PRIORITY", "6")])
    (entry,) = fake_journal.entries()
    assert entry["MESSAGE"] == big
    writer.close()


def test_without_the_journal_socket_lines_carry_the_prefix(
    stream_file: io.TextIOWrapper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    """If journald's socket cannot be reached, each line goes to stderr with its <N> prefix: nothing is lost."""
    monkeypatch.setattr(journal, "SOCKET", str(tmp_path / "no-such-socket"))
    setup_logging(LogSettings(), stream=stream_file)
    logger.bind(component="session").error("subscription of app x refused: forbidden (403)")
    logger.bind(component="session").info("subscribed to app y")
    logger.bind(component="session").opt(exception=ValueError("boom")).warning("with a traceback")
    stream_file.seek(0)
    lines = stream_file.read().splitlines()
    assert lines[:2] == [
        "<3>ERROR   session: subscription of app x refused: forbidden (403)",
        "<6>INFO    session: subscribed to app y",
    ]
    assert lines[2] == "<4>WARNING session: with a traceback"
    assert len(lines) > 3 and all(line.startswith("<4>") for line in lines[3:]), lines


def test_a_terminal_or_a_pipe_keeps_clean_lines(
    fake_journal: FakeJournal, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    """With $JOURNAL_STREAM inherited but stderr elsewhere (a terminal, a pipe), lines are plain and nothing is sent."""
    monkeypatch.setattr(journal, "SOCKET", fake_journal.path)
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    read, write = os.pipe()
    with os.fdopen(write, "w") as out, os.fdopen(read) as back:
        setup_logging(LogSettings(), stream=out)
        logger.warning("careful")
        out.close()
        assert back.read() == "WARNING xmppmon: careful\n"
    assert fake_journal.entries() == []
