"""journald: each log record at its own priority, with its bound fields as journal fields.

Under systemd, stderr is a stream to journald, which stores every line at the unit's default
priority (info) unless the line starts with an sd-daemon prefix such as ``<4>``. So when stderr *is*
that stream (``$JOURNAL_STREAM`` names its device and inode, as ``systemd.exec(5)`` says to check),
each record goes to journald through its native protocol (``systemd.journal-fields(7)``,
https://systemd.io/JOURNAL_NATIVE_PROTOCOL/): one datagram of ``KEY=value`` fields with
``PRIORITY=`` and the bound fields (``APP=``, ``EVENT_ID=``, ``STANZA_ID=``, ``CLIENT_REQUEST_ID=``,
``SINK=``, ``COMPONENT=``), so that ``journalctl -p warning`` and ``journalctl APP=my-app`` work. If a
datagram cannot be sent, the line goes to stderr with the priority prefix instead, so nothing is
lost and the priority still holds. Anywhere else (a terminal, a file, a pipe) nothing changes.

The protocol is a few dozen lines, so it is written here: ``systemd-python`` needs libsystemd's
headers and a compiler to install into a virtualenv, and ``cysystemd`` a compiled extension too;
the sd_notify side (``agent.systemd``) made the same choice.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import re
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any, TextIO

SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "xmppmon"
#: Bound fields sent as journal fields (upper-cased); the same as the short line shows, and the component.
FIELDS = ("component", "app", "event_id", "stanza_id", "client_request_id", "sink", "job")
_NAME = re.compile(r"^[A-Z0-9][A-Z0-9_]{0,63}$")


def priority(levelno: int) -> int:
    """syslog priority for a loguru level number: trace/debug 7, info 6, success 5, warning 4, error and up 3."""
    if levelno <= 10:
        return 7
    if levelno <= 20:
        return 6
    if levelno <= 25:
        return 5
    if levelno <= 30:
        return 4
    return 3


def prefixed(text: str, prio: int) -> str:
    """``text`` with the sd-daemon ``<N>`` prefix on every line (journald reads each line alone)."""
    return "".join(f"<{prio}>{line}" for line in text.splitlines(keepends=True))


def is_journal_stream(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when ``stream`` is the journald stream systemd connected (``$JOURNAL_STREAM`` = device:inode)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # StringIO and closed streams have no descriptor
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def encode(fields: Iterable[tuple[str, str]]) -> bytes:
    """Fields in the native protocol: ``KEY=value\\n``, or ``KEY\\n`` + 64-bit length + value for multi-line values."""
    out = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def record_fields(record: Any, message: str, redact: Callable[[str], str] = str) -> list[tuple[str, str]]:
    """The journal entry for one loguru record: MESSAGE, PRIORITY, identifier, the bound fields, code location."""
    fields = [
        ("MESSAGE", message.rstrip("\n")),
        ("PRIORITY", str(priority(record["level"].no))),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
    ]
    extra = record["extra"]
    for key in FIELDS:
        value = extra.get(key)
        if value is not None:
            fields.append((key.upper(), redact(str(value))))
    if record["exception"] is not None and record["exception"].type is not None:
        fields.append(("EXCEPTION", record["exception"].type.__name__))
    fields += [
        ("CODE_FILE", str(record["file"].path)),
        ("CODE_LINE", str(record["line"])),
        ("CODE_FUNC", str(record["function"])),
    ]
    return [(name, value) for name, value in fields if _NAME.match(name)]


class JournalWriter:
    """Sends records to journald natively; falls back to prefixed lines on ``fallback``."""

    def __init__(self, fallback: TextIO, path: str | None = None) -> None:
        self.fallback = fallback
        self.path = path or SOCKET
        self._sock: socket.socket | None = None

    @classmethod
    def for_stream(cls, stream: TextIO, path: str | None = None) -> JournalWriter | None:
        """A writer when ``stream`` is systemd's journal stream, else None (keep writing plain lines)."""
        return cls(stream, path) if is_journal_stream(stream) else None

    def write(self, record: Any, text: str, redact: Callable[[str], str] = str) -> None:
        prio = priority(record["level"].no)
        if not self.send(record_fields(record, text, redact)):
            self.fallback.write(prefixed(text, prio))
            self.fallback.flush()

    def send(self, fields: list[tuple[str, str]]) -> bool:
        data = encode(fields)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                self._sock.sendto(data, self.path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):  # too big for one datagram
                    raise
                self._send_memfd(data)
        except OSError:
            return False
        return True

    def _send_memfd(self, data: bytes) -> None:
        """The protocol's way for large entries: a sealed memfd passed with an empty datagram."""
        assert self._sock is not None
        fd = os.memfd_create("xmppmon-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            # socket.send_fds() drops its address argument (CPython 3.11), so sendmsg() it is.
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
            self._sock.sendmsg([], rights, 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    # loguru has no hook to close a function sink's resources when it is removed.
    __del__ = close
