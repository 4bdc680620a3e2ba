"""Settings: environment (``XMPPMON_…``, nested with ``__``), an optional TOML file, systemd credentials.

``settings`` the whole (:class:`Settings`) and how it is loaded; ``sections`` the agent's
sections; ``relay`` alert rules, the sidecar and its sinks.
"""

from agent.config.azure import AzureSettings
from agent.config.observe import HealthSettings, MetricsSettings, parse_listen
from agent.config.relay import (
    AlertmanagerSink,
    AlertRule,
    AlertSettings,
    SidecarSettings,
    Sink,
    WebhookSink,
    XmppSink,
)
from agent.config.sections import (
    SERVER_IDLE_LIMIT,
    AppCredentials,
    ExportSettings,
    KeepaliveSettings,
    LogSettings,
    MonitorSettings,
    PluginSettings,
    ReconnectSettings,
    StoreSettings,
    XmppSettings,
)
from agent.config.settings import Settings, describe_validation_error, load_settings

__all__ = [
    "SERVER_IDLE_LIMIT",
    "AlertRule",
    "AlertSettings",
    "AlertmanagerSink",
    "AppCredentials",
    "AzureSettings",
    "ExportSettings",
    "HealthSettings",
    "KeepaliveSettings",
    "LogSettings",
    "MetricsSettings",
    "MonitorSettings",
    "PluginSettings",
    "ReconnectSettings",
    "Settings",
    "SidecarSettings",
    "Sink",
    "StoreSettings",
    "WebhookSink",
    "XmppSettings",
    "XmppSink",
    "describe_validation_error",
    "load_settings",
    "parse_listen",
]
