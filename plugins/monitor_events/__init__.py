"""The built-in plugin: persist the Monitor API's event stream (``plugin``), with its stanza helpers (``stanza``)."""

from plugins.monitor_events.plugin import MonitorEvents

__all__ = ["MonitorEvents"]
