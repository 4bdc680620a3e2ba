"""Exponential backoff with full jitter, reset only once a connection has proven stable."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays of ``uniform(0, min(maximum, initial * 2**n))`` (AWS "full jitter").

    Jitter spreads the reconnections of many agents after a server restart; the cap keeps the
    delay bounded however long the outage. :meth:`connected` and :meth:`disconnected` reset the
    exponent only when the connection lasted ``stable_after`` seconds, so a flapping server does
    not get hammered at the initial delay.
    """

    initial: float = 1.0
    maximum: float = 120.0
    stable_after: float = 60.0
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)
    _up_since: float | None = None

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** min(self.attempts, 32)))
        self.attempts += 1
        return self.rng.uniform(0, ceiling)

    def connected(self, now: float | None = None) -> None:
        self._up_since = time.monotonic() if now is None else now

    def disconnected(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._up_since is not None and now - self._up_since >= self.stable_after:
            self.attempts = 0
        self._up_since = None
