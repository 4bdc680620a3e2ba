"""Settings: environment (``XMPPMON_…``, nested with ``__``), an optional TOML file, systemd credentials.

Precedence, highest first: explicit values, environment, credentials in ``$CREDENTIALS_DIRECTORY``
(files named like ``xmpp__password``), the TOML file (``--config`` or ``XMPPMON_CONFIG``), defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from agent.exceptions import ConfigError

#: The Monitor API drops a connection that has sent nothing for this long (seed 000).
SERVER_IDLE_LIMIT = 600.0

_JID = re.compile(r"^[^@/\s]+@[^@/\s]+(/\S+)?$")
_DOMAIN_JID = re.compile(r"^([^@/\s]+@)?[^@/\s]+(/\S+)?$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class XmppSettings(_Section):
    """The agent's own XMPP account and how to reach its server."""

    jid: str = Field(default="agent@localhost", description="the agent's account (bare or full JID)")
    password: SecretStr = SecretStr("")
    host: str | None = Field(default=None, description="server address; default: the JID's domain")
    port: int = Field(default=5222, ge=1, le=65535)
    ca_file: Path | None = Field(default=None, description="trust this PEM instead of the system CAs")
    resource: str = "xmppmon"
    negotiation_timeout: float = Field(default=20.0, gt=0, description="seconds from TCP to session")

    @field_validator("jid")
    @classmethod
    def _jid(cls, value: str) -> str:
        if not _JID.match(value):
            raise ValueError(f"{value!r} is not a JID of the form user@domain[/resource]")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"CA file {value} does not exist or is not a file")
        return value


class AppCredentials(_Section):
    """One Monitor API application: its AppID and API key (not the SDK key)."""

    app: str = Field(min_length=1, max_length=128)
    key: SecretStr


class MonitorSettings(_Section):
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


class KeepaliveSettings(_Section):
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


class ReconnectSettings(_Section):
    """Exponential backoff with full jitter between connection attempts."""

    initial: float = Field(default=1.0, gt=0)
    maximum: float = Field(default=120.0, gt=0)
    stable_after: float = Field(default=60.0, ge=0, description="reset backoff after this long up")

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectSettings:
        if self.maximum < self.initial:
            raise ValueError("reconnect.maximum must be at least reconnect.initial")
        return self


class StoreSettings(_Section):
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


class PluginSettings(_Section):
    """Which plugins run: names from the built-ins and the ``xmppmon.plugins`` entry points."""

    enabled: list[str] = Field(default_factory=lambda: ["monitor_events"])


class ExportSettings(_Section):
    """Where ``xmppmon export create`` writes when no ``--dest`` is given."""

    dir: Path | None = Field(default=None, description="default: exports/ beside the database")


class LogSettings(_Section):
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    json_lines: Annotated[bool, Field(alias="json")] = False

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


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
    jid: str | None = Field(default=None, description="default: XMPPMON_XMPP__JID")
    password: SecretStr | None = Field(default=None, description="default: XMPPMON_XMPP__PASSWORD")
    resource: str = "xmppmon-sidecar"

    @model_validator(mode="after")
    def _somewhere(self) -> XmppSink:
        if not self.jids and not self.room:
            raise ValueError("an xmpp sink needs jids or a room")
        return self


Sink = Annotated[WebhookSink | AlertmanagerSink | XmppSink, Field(discriminator="type")]


class SidecarSettings(_Section):
    """The relay process (``xmppmon sidecar``) and its sinks."""

    sinks: list[Sink] = Field(default_factory=list)
    poll_seconds: float = Field(default=1.0, gt=0)
    agent_down_after: float = Field(default=60.0, gt=0, description="heartbeat age for 'agent down'")

    def named_sinks(self) -> list[tuple[str, WebhookSink | AlertmanagerSink | XmppSink]]:
        """Each sink with a unique name: its own, or its type numbered when repeated."""
        seen: dict[str, int] = {}
        named = []
        for sink in self.sinks:
            base = sink.name or sink.type
            seen[base] = seen.get(base, 0) + 1
            named.append((base if seen[base] == 1 else f"{base}-{seen[base]}", sink))
        return named


class Settings(BaseSettings):
    """Everything xmppmon reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="XMPPMON_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
    )

    xmpp: XmppSettings = Field(default_factory=XmppSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    keepalive: KeepaliveSettings = Field(default_factory=KeepaliveSettings)
    reconnect: ReconnectSettings = Field(default_factory=ReconnectSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    sidecar: SidecarSettings = Field(default_factory=SidecarSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            sources.append(
                NestedSecretsSettingsSource(
                    file_secret_settings,
                    secrets_dir=credentials,
                    secrets_dir_missing="error",
                    secrets_nested_delimiter="__",
                    secrets_prefix="",
                )
            )
        if _TOML_PATH is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_TOML_PATH))
        return tuple(sources)


# pydantic-settings builds its sources from the class, so the chosen TOML file is passed here.
_TOML_PATH: Path | None = None


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings, or raise ConfigError with one line naming what is wrong.

    ``config_file`` defaults to ``$XMPPMON_CONFIG``; the file must exist when named.
    """
    global _TOML_PATH
    path = config_file or os.environ.get("XMPPMON_CONFIG") or None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist or is not a file")
    _TOML_PATH = path
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:  # bad JSON in a complex environment value, unreadable credentials
        raise ConfigError(f"cannot read settings: {_one_line(str(exc))}") from None
    except (ValueError, OSError) as exc:  # TOML syntax errors, unreadable files
        raise ConfigError(f"cannot read settings from {path}: {_one_line(str(exc))}") from None
    finally:
        _TOML_PATH = None


def describe_validation_error(exc: ValidationError) -> str:
    """One line: the first problem with its setting name as an operator would write it."""
    errors = exc.errors()
    first = errors[0]
    name = "XMPPMON_" + "__".join(str(part).upper() for part in first["loc"] if part != "__root__")
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"invalid setting {name}: {message}{more}"


def _one_line(text: str) -> str:
    return " ".join(text.split())
