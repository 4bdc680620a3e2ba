"""Loopback helpers shared by the lab's private servers: free ports, stream probes, log tails."""

from __future__ import annotations

import contextlib
import socket
from collections import deque
from pathlib import Path

STREAM_NS = "http://etherx.jabber.org/streams"


def free_loopback_port() -> int:
    """Ask the kernel for a currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 20) -> str:
    """Return the last *lines* lines of a text file, or a placeholder."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip()
    except FileNotFoundError:
        return "<no output>"


def exchange(port: int, header: str, expect: bytes) -> None:
    """Send a stream header to 127.0.0.1:*port* and read until *expect* arrives.

    A listening socket alone proves little (servers bind before their hosts are configured), so
    only a real XMPP answer counts as ready.
    """
    # Short timeout: a ready server answers within milliseconds, and a foreign listener on our
    # port must not stall the caller's other checks.
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(header.encode())
        received = b""
        while expect not in received:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"port {port} closed the stream: {received[-300:]!r}")
            received += chunk
        # Close politely so the server does not log a stream error.
        with contextlib.suppress(OSError):
            sock.sendall(b"</stream:stream>")


def c2s_header(domain: str) -> str:
    return (
        f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
        f"xmlns:stream='{STREAM_NS}' version='1.0'>"
    )


def component_header(component: str) -> str:
    return (
        f"<?xml version='1.0'?><stream:stream to='{component}' "
        f"xmlns='jabber:component:accept' xmlns:stream='{STREAM_NS}'>"
    )
