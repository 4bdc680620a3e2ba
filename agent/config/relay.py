"""Settings of alerts and of the relay: alert rules, the sidecar and its sinks."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from agent.config.observe import check_listen
from agent.config.sections import Section as _Section


class AlertRule(_Section):
    """Overrides for one alert class; unset fields keep the class default (docs/alerts.md)."""

    threshold: int | None = Field(default=None, gt=0, description="occurrences to fire")
    window_seconds: float | None = Field(default=None, gt=0, description="...within this window")
    for_seconds: float | None = Field(default=None, ge=0, description="and pending this long")
    repeat_seconds: float | None = Field(default=None, gt=0, description="re-notify while firing")
    quiet_seconds: float | None = Field(default=None, ge=0, description="resolve after silence; 0: never")
    resolve_hold_seconds: float | None = Field(
        default=None, ge=0, description="success must follow the last problem by this much"
    )
    flap_seconds: float | None = Field(default=None, ge=0, description="re-firing sooner than this counts as a flap")
    severity: Literal["info", "warning", "critical"] | None = None
    by_class: bool | None = Field(default=None, description="identity uses the class, not the code")


class AlertSettings(_Section):
    """Alert rules evaluated by the store's writer in the transaction of the events (DESIGN §4)."""

    enabled: bool = True
    rules: dict[str, AlertRule] = Field(default_factory=dict, description="per class overrides")
    disconnected_after_seconds: float = Field(default=120.0, ge=0)
    sweep_seconds: float = Field(default=5.0, gt=0, description="quiet resolution and repeats")


class _SinkBase(_Section):
    name: str | None = Field(default=None, description="default: the type, numbered if repeated")
    timeout: float = Field(default=10.0, gt=0)
    attempts: int = Field(default=3, ge=1, description="tries per round before parking")
    backoff_initial: float = Field(default=0.5, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)
    backoff_jitter: float = Field(default=0.5, ge=0)
    park_seconds: float = Field(default=30.0, ge=0, description="wait after a round fails")
    max_retry_after: float = Field(default=120.0, ge=0, description="longer Retry-After: park")
    failing_retry_seconds: float = Field(default=60.0, ge=0, description="401/403: wait this long")


class WebhookSink(_SinkBase):
    type: Literal["webhook"]
    url: str
    token: SecretStr | None = None
    max_batch: int = Field(default=100, gt=0)
    max_bytes: int = Field(default=1_000_000, gt=0, description="request body limit (seed 003)")
    client_statistics: bool = Field(default=False, description="send X-ClientStatistics")


class AlertmanagerSink(_SinkBase):
    type: Literal["alertmanager"]
    url: str
    resend_seconds: float = Field(default=60.0, gt=0, description="re-post while firing")


class XmppSink(_SinkBase):
    type: Literal["xmpp"]
    jids: list[str] = Field(default_factory=list)
    room: str | None = None
    nick: str = "xmppmon"
    jid: str | None = Field(default=None, description="the sink's own account, never the agent's")
    password: SecretStr | None = Field(default=None, description="the sink's own account's password")
    resource: str = "xmppmon-sidecar"

    @model_validator(mode="after")
    def _somewhere(self) -> XmppSink:
        if not self.jids and not self.room:
            raise ValueError("an xmpp sink needs jids or a room")
        if not self.jid or not self.password or not self.password.get_secret_value():
            # Logged in as the agent, its initial presence would draw the agent's offline messages.
            raise ValueError("an xmpp sink needs an account of its own: set its jid and password")
        if not re.fullmatch(r"[^@/\s]+@[^@/\s]+(/.*)?", self.jid):
            raise ValueError(f"jid {self.jid!r} is not a JID of the form user@domain")
        return self


Sink = Annotated[WebhookSink | AlertmanagerSink | XmppSink, Field(discriminator="type")]


class SidecarSettings(_Section):
    """The relay process (``xmppmon sidecar``) and its sinks."""

    sinks: list[Sink] = Field(default_factory=list)
    poll_seconds: float = Field(default=1.0, gt=0)
    agent_down_after: float = Field(default=60.0, gt=0, description="heartbeat age for 'agent down'")
    metrics_listen: str = Field(default="", description="HOST:PORT of the sidecar's /metrics; empty: off")

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen(cls, value: str) -> str:
        return check_listen(value)

    def named_sinks(self) -> list[tuple[str, WebhookSink | AlertmanagerSink | XmppSink]]:
        """Each sink with a unique name: its own, or its type numbered when repeated."""
        seen: dict[str, int] = {}
        named = []
        for sink in self.sinks:
            base = sink.name or sink.type
            seen[base] = seen.get(base, 0) + 1
            named.append((base if seen[base] == 1 else f"{base}-{seen[base]}", sink))
        return named
