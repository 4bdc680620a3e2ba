"""systemd: the sd_notify protocol (``notify``) and the agent's health policy (``watchdog``)."""

from agent.systemd.notify import Notifier, stop_on_signals, watchdog_interval
from agent.systemd.watchdog import WriterHealth, supervise

__all__ = ["Notifier", "WriterHealth", "stop_on_signals", "supervise", "watchdog_interval"]
