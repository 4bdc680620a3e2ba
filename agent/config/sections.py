"""The agent's settings sections: the XMPP account, the Monitor API, keepalive, reconnection, store, logs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

#: The Monitor API drops a connection that has sent nothing for this long (seed 000).
SERVER_IDLE_LIMIT = 600.0

_JID = re.compile(r"^[^@/\s]+@[^@/\s]+(/\S+)?$")
_DOMAIN_JID = re.compile(r"^([^@/\s]+@)?[^@/\s]+(/\S+)?$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"CA file {value} does not exist or is not a file")
    return value


#: A PEM file to trust instead of the system CAs: it must exist when the settings load.
CaFile = Annotated[Path | None, AfterValidator(_existing_file)]


class XmppSettings(Section):
    """The agent's own XMPP account and how to reach its server."""

    jid: str = Field(default="agent@localhost", description="the agent's account (bare or full JID)")
    password: SecretStr = SecretStr("")
    host: str | None = Field(default=None, description="server address; default: the JID's domain")
    port: int = Field(default=5222, ge=1, le=65535)
    ca_file: CaFile = Field(default=None, description="trust this PEM instead of the system CAs")
    resource: str = "xmppmon"
    negotiation_timeout: float = Field(default=20.0, gt=0, description="seconds from TCP to session")

    @field_validator("jid")
    @classmethod
    def _jid(cls, value: str) -> str:
        if not _JID.match(value):
            raise ValueError(f"{value!r} is not a JID of the form user@domain[/resource]")
        return value


class AppCredentials(Section):
    """One Monitor API application: its AppID and API key (not the SDK key)."""

    app: str = Field(min_length=1, max_length=128)
    key: SecretStr


class MonitorSettings(Section):
    """The Monitor API service and the applications to subscribe."""

    jid: str = Field(default="monitor.localhost", description="the Monitor API service's JID")
    apps: list[AppCredentials] = Field(default_factory=list)
    namespace: str = "urn:xmppmon:monitor:1"
    max_payload_bytes: int = Field(default=64 * 1024, gt=0, description="larger events go to quarantine")
    subscribe_timeout: float = Field(default=15.0, gt=0)

    @field_validator("jid")
    @classmethod
    def _jid(cls, value: str) -> str:
        if not _DOMAIN_JID.match(value):
            raise ValueError(f"{value!r} is not a JID")
        return value


class KeepaliveSettings(Section):
    """XEP-0199 pings: the Monitor API drops a connection silent for 10 minutes."""

    interval: float = Field(default=240.0, gt=0, description="seconds between pings")
    timeout: float = Field(default=30.0, gt=0, description="seconds to wait for a ping answer")

    @field_validator("interval")
    @classmethod
    def _under_idle_limit(cls, value: float) -> float:
        if value >= SERVER_IDLE_LIMIT:
            raise ValueError(
                f"must be under {SERVER_IDLE_LIMIT:.0f} s: the Monitor API drops a connection "
                "that sends nothing for 10 minutes"
            )
        return value


class ReconnectSettings(Section):
    """Exponential backoff with full jitter between connection attempts."""

    initial: float = Field(default=1.0, gt=0)
    maximum: float = Field(default=120.0, gt=0)
    stable_after: float = Field(default=60.0, ge=0, description="reset backoff after this long up")

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectSettings:
        if self.maximum < self.initial:
            raise ValueError("reconnect.maximum must be at least reconnect.initial")
        return self


class StoreSettings(Section):
    """The SQLite database and the writer's group commit."""

    path: Path = Path("xmppmon.db")
    batch_size: int = Field(default=500, gt=0, description="flush after this many records")
    flush_ms: float = Field(default=10.0, gt=0, description="or after this many milliseconds")
    busy_timeout_ms: int = Field(default=30_000, ge=0)
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    stall_seconds: float = Field(
        default=60.0, gt=0,
        description="a write blocked this long counts as wedged (systemd watchdog); keep it above busy_timeout",
    )  # fmt: skip
    max_backlog_records: int = Field(
        default=100_000, gt=0, description="records waiting for a commit before reads from the server pause"
    )
    max_backlog_mb: int = Field(
        default=256, gt=0, description="or megabytes they take in memory (~0.7 KB + the payload each)"
    )
    max_commit_records: int = Field(
        default=10_000, gt=0, description="records per transaction: after a full disk, each freed megabyte commits"
    )
    identity_window: int = Field(
        default=1_000_000, ge=2,
        description="newest event ids kept in memory to recognise an id sent again with another ts (~45 MB/million)",
    )  # fmt: skip
    min_free_mb: float = Field(default=512, ge=0, description="raise disk_low below this much free space; 0: never")


class PluginSettings(Section):
    """Which plugins run: names from the built-ins and the ``xmppmon.plugins`` entry points."""

    enabled: list[str] = Field(default_factory=lambda: ["monitor_events"])


class ExportSettings(Section):
    """Where ``xmppmon export create`` writes when no ``--dest`` is given."""

    dir: Path | None = Field(default=None, description="default: exports/ beside the database")


class LogSettings(Section):
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    json_lines: Annotated[bool, Field(alias="json")] = False

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
