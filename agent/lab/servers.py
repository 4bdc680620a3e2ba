"""The lab's XMPP servers behind one interface, so a test or a benchmark can run against each.

``make_server("prosody" | "ejabberd", workdir, **knobs)`` builds a private, not yet started server;
the knobs both understand are ``hibernation_time``, ``max_queue_size`` (docs/servers.md says what
each means on each server), ``log_level``, ``muc``, ``domain``, ``component`` and
``component_secret``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from agent.exceptions import LabError
from agent.lab.ejabberd import EjabberdServer
from agent.lab.prosody import ProsodyServer

#: Every server the lab can run, in the order the test suite runs them.
SERVER_KINDS = ("prosody", "ejabberd")


class XmppServer(Protocol):
    """What :class:`ProsodyServer` and :class:`EjabberdServer` both offer."""

    workdir: Path
    domain: str
    component: str
    component_secret: str
    hibernation_time: int
    max_queue_size: int
    c2s_port: int
    component_port: int
    ca_file: Path
    log_path: Path
    pid: int | None

    @property
    def running(self) -> bool: ...
    @property
    def frozen(self) -> bool: ...
    def start(self, timeout: float = ...) -> None: ...
    def stop(self, timeout: float = ...) -> None: ...
    def restart(self, timeout: float = ...) -> None: ...
    def kill(self) -> None: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def register(self, user: str, password: str) -> str: ...
    def shell(self, command: str, timeout: float = ...) -> str: ...


def make_server(kind: str, workdir: Path, **knobs: Any) -> XmppServer:
    """A private server of *kind* rooted at *workdir*, not started yet."""
    if kind == "prosody":
        return ProsodyServer(workdir, **knobs)
    if kind == "ejabberd":
        return EjabberdServer(workdir, **knobs)
    raise LabError(f"unknown XMPP server {kind!r}: choose one of {', '.join(SERVER_KINDS)}")
