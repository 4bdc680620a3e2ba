"""Settings of forwarding to NATS JetStream (``XMPPMON_FORWARD__…``), done by the sidecar (docs/scale.md)."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from agent.config.sections import CaFile, Section

_PLACEHOLDER = re.compile(r"\{([^}]*)\}")
SUBJECT_FIELDS = ("account", "app", "kind")
#: Characters that cannot appear in a NATS subject token (besides the token separator '.').
_BAD_TOKEN = re.compile(r"[\s*>]")


class ForwardSettings(Section):
    """Forward every committed record to a NATS JetStream cluster, exactly once; empty ``nats_urls``: off."""

    nats_urls: list[str] = Field(default_factory=list, description="the cluster's URLs, nats:// or tls://")
    stream: str = Field(default="XMPPMON", description="JetStream stream, created if missing")
    subject: str = Field(default="xmppmon.{account}.{app}.{kind}", description="{account}, {app}, {kind}")
    account: str | None = Field(default=None, description="{account} in subjects; default: the JID's local part")
    credentials: SecretStr | None = Field(
        default=None, description="a NATS .creds file's text or a token (from $CREDENTIALS_DIRECTORY)"
    )
    ca_file: CaFile = Field(default=None, description="trust this PEM for TLS instead of the system CAs")
    max_lag_seconds: float = Field(default=300.0, gt=0, description="raise forward_lagging past this lag")
    duplicate_window: float = Field(default=3600.0, gt=0, description="seconds; for a stream it creates")
    replicas: int = Field(default=3, ge=1, le=5, description="for a stream it creates")
    max_in_flight: int = Field(default=1000, ge=1, le=100_000, description="publishes awaiting their ack")
    ack_timeout: float = Field(default=5.0, gt=0, description="a publish unacknowledged this long failed")
    alerts: bool = Field(default=False, description="forward the alert notifications too")
    poll_ms: float = Field(default=20.0, gt=0, description="how often to look for new records when idle")

    @property
    def enabled(self) -> bool:
        return bool(self.nats_urls)

    @field_validator("nats_urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"^(nats|tls)://[^\s/]+$", url):
                raise ValueError(f"{url!r} is not a NATS server URL (nats://host:port or tls://host:port)")
        return value

    @field_validator("stream")
    @classmethod
    def _stream(cls, value: str) -> str:
        if not value or re.search(r"[\s.*>/\\]", value):
            raise ValueError(f"{value!r} is not a stream name (no spaces, '.', '*', '>', '/' or '\\')")
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        unknown = [name for name in _PLACEHOLDER.findall(value) if name not in SUBJECT_FIELDS]
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use {{account}}, {{app}} and {{kind}}")
        tokens = value.split(".")
        if any(not token or _BAD_TOKEN.search(token) for token in tokens):
            raise ValueError(f"{value!r} is not a NATS subject (empty token, space, '*' or '>')")
        return value
