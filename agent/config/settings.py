"""Settings: environment (``XMPPMON_…``, nested with ``__``), an optional TOML file, systemd credentials.

Precedence, highest first: explicit values, environment, credentials in ``$CREDENTIALS_DIRECTORY``
(files named like ``xmpp__password``), the TOML file (``--config`` or ``XMPPMON_CONFIG``), defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from agent.config.azure import AzureSettings
from agent.config.forward import ForwardSettings
from agent.config.observe import HealthSettings, MetricsSettings
from agent.config.relay import AlertSettings, SidecarSettings
from agent.config.retention import RetentionSettings
from agent.config.sections import (
    ExportSettings,
    KeepaliveSettings,
    LogSettings,
    MonitorSettings,
    PluginSettings,
    ReconnectSettings,
    StoreSettings,
    XmppSettings,
)
from agent.exceptions import ConfigError


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
    azure: AzureSettings = Field(default_factory=AzureSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    forward: ForwardSettings = Field(default_factory=ForwardSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

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
