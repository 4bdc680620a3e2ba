"""What the session tells its listeners (metrics, health) as it happens; it never waits for them.

Each hook is a list of callables, called in order, synchronously, on the event loop. A listener
that raises is logged once per hook and the session goes on: observing must not break collecting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

log = logger.bind(component="session")


@dataclass
class SessionHooks:
    #: A connection attempt produced a session: called with True when the stream was resumed.
    up: list[Callable[[bool], None]] = field(default_factory=list)
    #: An established session was lost: called with the reason.
    down: list[Callable[[str], None]] = field(default_factory=list)
    #: A connection attempt failed before any session: called with the reason.
    failed: list[Callable[[str], None]] = field(default_factory=list)
    #: A ping was answered: called with the round-trip time in seconds.
    rtt: list[Callable[[float], None]] = field(default_factory=list)
    _broken: set[int] = field(default_factory=set)

    def emit(self, hook: list[Callable[[Any], None]], value: Any) -> None:
        for listener in hook:
            try:
                listener(value)
            except Exception as exc:
                if id(hook) not in self._broken:
                    self._broken.add(id(hook))
                    log.opt(exception=exc).error("a session listener failed (logged once): {}", exc)
