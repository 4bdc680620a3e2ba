"""The batched webhook sink (seed 003): many notifications per POST, per-item results on 207."""

from __future__ import annotations

from agent.config import WebhookSink
from agent.sidecar.http import HttpSink


class WebhookRelay(HttpSink):
    """The batched webhook of seed 003: ``{"messages": [...]}``, optional bearer token."""

    cfg: WebhookSink

    def headers(self) -> dict[str, str]:
        token = self.cfg.token
        return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    @property
    def max_batch(self) -> int:
        return self.cfg.max_batch

    @property
    def max_bytes(self) -> int:
        return self.cfg.max_bytes
