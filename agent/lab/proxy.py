"""A loopback TCP proxy that can cut the network: every connection is reset once a byte budget is spent.

For tests of uploads that lose the network midway: the client talks to the proxy's port, the
proxy forwards to the real server, and after ``budget`` bytes from clients it resets the
connection in flight and every new one, until :meth:`heal`. Threads, bounded by the connections
the test opens; :meth:`stop` closes everything.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from agent.lab.net import free_loopback_port


class CuttingProxy:
    """127.0.0.1:``port`` forwarding to 127.0.0.1:``target``; see the module docstring."""

    def __init__(self, target: int, budget: int | None = None) -> None:
        self.target, self.budget = target, budget
        self.port = free_loopback_port()
        self.sent = 0  # bytes forwarded from clients to the server
        self.cuts = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopped = False
        threading.Thread(target=self._accept, name="cutting-proxy", daemon=True).start()

    def heal(self) -> None:
        """Forward everything again."""
        with self._lock:
            self.budget = None

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                _reset(sock)
            self._sockets.clear()

    def _spent(self) -> bool:
        return self.budget is not None and self.sent >= self.budget

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._spent():
                self.cuts += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._sockets.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if upstream:
                    with self._lock:
                        allowed = len(data) if self.budget is None else max(0, self.budget - self.sent)
                        self.sent += min(len(data), allowed)
                    if allowed < len(data):
                        sink.sendall(data[:allowed])
                        self.cuts += 1
                        break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            _reset(sock)
            with self._lock:
                self._sockets.discard(sock)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dropped network looks to the peer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
