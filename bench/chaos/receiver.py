"""The webhook receiver: records every notification the sidecar sends, and misbehaves on demand.

It speaks the batched webhook of seed 003 (``{"messages": [...]}``; 2xx = all accepted; 207 with one
``responses`` item per message). Modes, set with :meth:`Receiver.set_mode`:

``ok``      200, every message accepted;
``500``     500, nothing accepted;
``429``     429 with ``Retry-After`` (seconds), nothing accepted;
``207``     207, every other message accepted (``xactionId``), the rest ``statusCode`` 500;
``413``     413 for a batch of more than ``MAX_413_BATCH`` messages (a size limit), else 200;
``hang``    no answer for ``hang_seconds`` (past the sink's timeout), then the connection is
            closed without a response: nothing accepted (a gateway that dropped the request);
``down``    the listening socket is closed: connection refused.

A message counts as *delivered* only when the receiver accepted it (2xx, or ``xactionId`` in a 207).
The path names the sink (``/alerts`` for the first, ``/late`` for the one added during the run).
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

MODES = ("ok", "500", "429", "207", "413", "hang", "down")
MAX_413_BATCH = 3


@dataclass(slots=True)
class Delivery:
    """One message the receiver accepted."""

    t: float
    sink: str
    key: str
    notification_alert_id: int | None
    transition: str
    created_at: str


@dataclass
class Request:
    t: float
    sink: str
    mode: str
    status: int | None
    messages: int


@dataclass
class Receiver:
    """A threaded HTTP server on 127.0.0.1 (a fixed port, kept across ``down``)."""

    retry_after: int = 1
    hang_seconds: float = 3.5
    port: int = 0
    mode: str = "ok"
    deliveries: list[Delivery] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    modes: list[tuple[float, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: http.server.ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _n: int = 0

    def url(self, sink: str = "alerts") -> str:
        return f"http://127.0.0.1:{self.port}/{sink}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        self._listen()
        self.modes.append((time.time(), self.mode))

    def _listen(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                receiver._handle(self)

        deadline = time.monotonic() + 10
        while True:
            try:
                server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def stop(self) -> None:
        self._close()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown receiver mode {mode!r}")
        with self._lock:
            previous, self.mode = self.mode, mode
            self.modes.append((time.time(), mode))
        if mode == "down" and previous != "down":
            self._close()
        elif previous == "down" and mode != "down":
            self._listen()

    # -- requests ----------------------------------------------------------------------------

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        sink = handler.path.strip("/").split("?")[0] or "alerts"
        try:
            messages = orjson.loads(body).get("messages") or []
        except (orjson.JSONDecodeError, AttributeError):
            messages = []
        with self._lock:
            mode = self.mode
            self._n += 1
            n = self._n
        now = time.time()
        status: int | None
        accepted: list[dict[str, Any]] = []
        payload: dict[str, Any] = {}
        headers: dict[str, str] = {}
        if mode == "hang":
            time.sleep(self.hang_seconds)
            self._log(Request(now, sink, mode, None, len(messages)), [])
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "500":
            status = 500
        elif mode == "429":
            status, headers = 429, {"Retry-After": str(self.retry_after)}
        elif mode == "207":
            status = 207
            responses = []
            for i, message in enumerate(messages):
                if (i + n) % 2 == 0:
                    accepted.append(message)
                    responses.append({"xactionId": f"x:{n}:{i}"})
                else:
                    responses.append({"statusCode": 500, "message": "busy, try again"})
            payload = {"responses": responses}
        elif mode == "413" and len(messages) > MAX_413_BATCH:
            status = 413
        else:  # ok, down (a request already connected when the socket closed), small batch in 413
            status = 200
            accepted = list(messages)
        self._log(Request(now, sink, mode, status, len(messages)), accepted, sink)
        data = orjson.dumps(payload)
        with contextlib.suppress(OSError):
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)

    def _log(self, request: Request, accepted: list[dict[str, Any]], sink: str = "") -> None:
        with self._lock:
            self.requests.append(request)
            for message in accepted:
                alert = message.get("alert") or {}
                self.deliveries.append(
                    Delivery(
                        request.t, sink, str(message.get("id")), alert.get("alert_id"),
                        str(message.get("transition")), str(message.get("created_at")),
                    )
                )  # fmt: skip

    def snapshot(self, since: int = 0) -> list[Delivery]:
        """Deliveries accepted so far, from index ``since``."""
        with self._lock:
            return self.deliveries[since:]
