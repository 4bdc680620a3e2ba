"""The listener: ``/metrics`` (prometheus-client's WSGI app), ``/healthz`` and ``/readyz``, in a thread.

A thread, not the event loop: a scrape must never delay the stream, and ``/healthz`` answering
while the loop is busy is what it is for. The handlers only read (the registry's metrics are
thread-safe, :meth:`agent.health.Health.reasons` only reads).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from loguru import logger
from prometheus_client import CollectorRegistry, make_wsgi_app

from agent.config import parse_listen
from agent.exceptions import ConfigError

log = logger.bind(component="metrics")

StartResponse = Callable[..., Any]
#: Why the process is not ready (empty: ready); None: the process has no readiness (the sidecar).
Readiness = Callable[[], list[str]] | None


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the journal."""


def _json(start: StartResponse, status: str, body: object) -> Iterable[bytes]:
    data = orjson.dumps(body)
    start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def make_app(registry: CollectorRegistry, readiness: Readiness) -> Callable[[dict[str, Any], StartResponse], Any]:
    """The WSGI app: /metrics, /healthz (200 while the process runs), /readyz (200 or 503 and the reasons)."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _json(start, "200 OK", {"status": "alive"})
        if path == "/readyz" and readiness is not None:
            try:
                reasons = readiness()
            except Exception as exc:  # a bug must read as not ready, not as a hung probe
                reasons = [f"readiness check failed: {exc}"]
            return _json(start, "503 Service Unavailable" if reasons else "200 OK", reasons)
        if path in ("/metrics", "/"):
            return metrics(environ, start)  # type: ignore[no-any-return]
        return _json(start, "404 Not Found", {"error": f"no such path {path}: try /metrics, /healthz, /readyz"})

    return app


class Listener:
    """A running listener; :meth:`close` stops it (idempotent)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server, self.thread = server, thread
        self.port: int = server.server_address[1]
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)


def serve(listen: str, registry: CollectorRegistry, readiness: Readiness, setting: str) -> Listener:
    """Listen on ``HOST:PORT`` in a daemon thread; ConfigError names ``setting`` if it cannot bind."""
    host, port = parse_listen(listen)

    class Server(_Server):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        server = make_server(host, port, make_app(registry, readiness), Server, handler_class=_Quiet)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen} ({setting}): {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.serve_forever, name="xmppmon-metrics", daemon=True)
    thread.start()
    log.info("metrics on http://{}/metrics (and /healthz, /readyz)", listen)
    return Listener(server, thread)
