"""Seed 001's instrumentation on every HTTP request the sidecar sends, and what it keeps of the answer.

Requests carry a ``User-Agent`` naming xmppmon, a fresh ``client-request-id`` and
``return-client-request-id: true``, and optionally ``X-ClientStatistics`` with the previous
request's latency. From responses it keeps ``request-id``, the echoed ``client-request-id``
(checked), ``X-FEServer``, ``X-TargetBEServer``, ``X-DiagInfo`` and the parsed ``x-ms-diagnostics``.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from loguru import logger

from agent import __version__

log = logger.bind(component="sidecar")

USER_AGENT: Final = f"xmppmon/{__version__} (sidecar; +https://github.com/xmppmon)"
#: x-ms-diagnostics error ids (seed 001).
DIAGNOSTIC_TYPES: Final = {
    2000000: "invalid_signature", 2000001: "invalid_token", 2000002: "token_expired",
    2000003: "invalid_resource", 2000004: "invalid_tenant", 2000005: "invalid_user",
    2000006: "invalid_client", 2000007: "internal_error", 2000008: "invalid_grant",
}  # fmt: skip
_PAIR = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Diagnostics:
    error_id: int | None
    reason: str | None
    error_type: str | None


def parse_diagnostics(value: str | None) -> Diagnostics | None:
    """Parse ``errorId;reason="…";error_type="…"``; the type defaults from the id's table."""
    if not value:
        return None
    head, _, rest = value.partition(";")
    error_id = int(head.strip()) if head.strip().isdigit() else None
    pairs = {k.lower(): v for k, v in _PAIR.findall(rest if error_id is not None else value)}
    error_type = pairs.get("error_type") or pairs.get("error_category")
    if error_type is None and error_id is not None:
        error_type = DIAGNOSTIC_TYPES.get(error_id)
    return Diagnostics(error_id, pairs.get("reason"), error_type)


@dataclass(slots=True)
class Exchange:
    """What one request and its response leave in the deliveries table."""

    client_request_id: str
    started_at: float
    finished_at: float = 0.0
    http_status: int | None = None
    request_id: str | None = None
    echoed_id: str | None = None
    fe_server: str | None = None
    be_server: str | None = None
    diag_info: str | None = None
    diagnostics: Diagnostics | None = None
    error: str | None = None

    @property
    def latency_ms(self) -> float:
        return round((self.finished_at - self.started_at) * 1000, 1)

    def columns(self) -> dict[str, Any]:
        d = self.diagnostics
        return {
            "http_status": self.http_status, "request_id": self.request_id,
            "client_request_id": self.client_request_id, "fe_server": self.fe_server,
            "be_server": self.be_server, "diag_info": self.diag_info,
            "diag_error_id": d.error_id if d else None, "diag_reason": d.reason if d else None,
            "diag_error_type": d.error_type if d else None, "latency_ms": self.latency_ms,
        }  # fmt: skip


@dataclass
class InstrumentedClient:
    """An ``httpx.AsyncClient`` that instruments each request (seed 001)."""

    client: httpx.AsyncClient
    operation: str = "notify"
    client_statistics: bool = False
    _previous: tuple[str, float] | None = field(default=None, init=False)

    async def post(
        self, url: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[httpx.Response | None, Exchange]:
        """POST ``body``; a transport error is returned in ``Exchange.error`` with no response."""
        exchange = Exchange(str(uuid.uuid4()), time.time())
        sent = {
            "User-Agent": USER_AGENT, "Content-Type": "application/json",
            "client-request-id": exchange.client_request_id, "return-client-request-id": "true",
            **(headers or {}),
        }  # fmt: skip
        if self.client_statistics and self._previous is not None:
            request_id, ms = self._previous
            sent["X-ClientStatistics"] = f"MessageId={request_id},ResponseTime={round(ms)},SoapAction={self.operation}"
        started = time.monotonic()
        try:
            response = await self.client.post(url, content=body, headers=sent)
        except httpx.HTTPError as exc:
            exchange.finished_at = time.time()
            exchange.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return None, exchange
        exchange.finished_at = exchange.started_at + (time.monotonic() - started)
        h = response.headers
        exchange.http_status = response.status_code
        exchange.request_id = h.get("request-id")
        exchange.echoed_id = h.get("client-request-id")
        exchange.fe_server, exchange.be_server = h.get("X-FEServer"), h.get("X-TargetBEServer")
        exchange.diag_info = h.get("X-DiagInfo")
        exchange.diagnostics = parse_diagnostics(h.get("x-ms-diagnostics"))
        if exchange.echoed_id is not None and exchange.echoed_id != exchange.client_request_id:
            log.warning(
                "{} answered for client-request-id {} to request {}: a proxy mixed responses?",
                url, exchange.echoed_id, exchange.client_request_id,
            )  # fmt: skip
        if exchange.request_id:
            self._previous = (exchange.request_id, exchange.latency_ms)
        if response.status_code >= 400:
            d = exchange.diagnostics
            log.bind(client_request_id=exchange.client_request_id).warning(
                "{} answered {} (request-id {}, X-FEServer {}, X-TargetBEServer {}, X-DiagInfo {}{})",
                url, response.status_code, exchange.request_id, exchange.fe_server,
                exchange.be_server, exchange.diag_info,
                f", x-ms-diagnostics {d.error_id} {d.error_type}: {d.reason}" if d else "",
            )  # fmt: skip
        return response, exchange
