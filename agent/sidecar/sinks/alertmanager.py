"""The Prometheus Alertmanager sink: ``POST /api/v2/alerts``.

Labels are the alert's identity, annotations its meaning, advice and count; ``startsAt`` is when
it fired and ``endsAt`` when it resolved. Alertmanager forgets an alert without ``endsAt`` after its
``resolve_timeout``, so the runner re-posts every firing alert each ``resend_seconds``
(:meth:`AlertmanagerRelay.repost`).
"""

from __future__ import annotations

from typing import Any

import orjson
from loguru import logger

from agent.config import AlertmanagerSink
from agent.sidecar.http import HttpSink
from agent.store.outbox import Item
from agent.store.sequencing import Policy

log = logger.bind(component="sidecar")


def am_alert(message: dict[str, Any]) -> dict[str, Any]:
    """One notification as an Alertmanager alert."""
    alert = message["alert"]
    labels = {
        "alertname": f"xmppmon_{alert['source']}_{alert['code']}",
        "source": alert["source"], "app": alert["app"], "code": str(alert["code"]),
        "api": alert["api"], "class": alert["class"], "severity": alert["severity"],
    }  # fmt: skip
    annotations = {
        "summary": alert["meaning"], "advice": alert["advice"], "count": str(alert["count"]),
        "detail": alert.get("detail") or "", "xmppmon_id": message["id"],
        "transition": message["transition"],
    }  # fmt: skip
    body: dict[str, Any] = {
        "labels": {k: v for k, v in labels.items() if v},
        "annotations": {k: v for k, v in annotations.items() if v},
        "startsAt": alert.get("fired_at") or alert["first_seen"],
    }
    if message["transition"] == "resolved":
        body["endsAt"] = alert.get("resolved_at") or message["created_at"]
    return body


class AlertmanagerRelay(HttpSink):
    """Posts notifications as alerts; a 2xx from Alertmanager confirms them."""

    cfg: AlertmanagerSink
    #: Alertmanager keeps only an alert's current state: the newest pending notification replaces older ones.
    order: Policy = "latest"

    @property
    def url(self) -> str:
        return self.cfg.url.rstrip("/") + "/api/v2/alerts"

    def encode(self, item: Item) -> bytes:
        return orjson.dumps(am_alert(item.message()))

    def body(self, parts: list[bytes]) -> bytes:
        return b"[" + b",".join(parts) + b"]"

    async def repost(self, firing: list[dict[str, Any]]) -> None:
        """Re-post the firing alerts so Alertmanager keeps them active; failures only logged."""
        if not firing:
            return
        body = self.body([orjson.dumps(am_alert(m)) for m in firing])
        response, ex = await self.http.post(self.url, body)
        if response is None or response.status_code >= 300:
            log.warning("sink {}: re-posting {} firing alert(s) failed: {}", self.name, len(firing),
                        ex.error or ex.http_status)  # fmt: skip
