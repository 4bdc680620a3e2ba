"""sd_notify for ``Type=notify`` units: READY, STATUS, WATCHDOG, RELOADING and STOPPING.

The protocol is one datagram of ``KEY=value`` lines sent to the AF_UNIX socket named in
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). It is a dozen lines, so it is
written here rather than depending on ``sdnotify`` (0.3.2, unmaintained since 2017, and it
swallows every error) or ``systemd-python`` (needs libsystemd headers to build). Outside systemd
(no ``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time

from loguru import logger

log = logger.bind(component="systemd")


class Notifier:
    """Sends sd_notify datagrams; does nothing when not started by systemd."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if address:
            # Abstract sockets: '@' stands for the leading NUL byte.
            self.address = b"\0" + address[1:].encode() if address.startswith("@") else address
        self._sock: socket.socket | None = None
        self._warned = False
        #: READY=1 was sent: from then on a reload says RELOADING=1 and READY=1 again.
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; False (and one warning) if it could not be sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at {!r}: {}", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        self.ready_sent = True
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self, status: str = "reloading the settings") -> bool:
        """RELOADING=1, with the CLOCK_MONOTONIC time that systemd 253+ wants (252 ignores the field)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def reloaded(self, status: str) -> bool:
        """READY=1 again: the reload is over (applied or refused)."""
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping: flushing the database") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """An event set by SIGTERM (systemd's stop) or SIGINT (Ctrl-C), for a clean shutdown."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def watchdog_interval() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds (systemd's advice), or None when no watchdog is set.

    ``$WATCHDOG_PID``, when present, must be this process: a child must not feed its parent's dog.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
