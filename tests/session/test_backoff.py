"""Reconnection backoff: exponential, jittered, capped, reset only after a stable connection."""

import random

from agent.session.backoff import Backoff


def test_delays_grow_exponentially_within_the_cap() -> None:
    """Each delay stays under initial*2**n and under the cap, and they spread (jitter)."""
    backoff = Backoff(initial=1, maximum=30, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    for n, delay in enumerate(delays):
        assert 0 <= delay <= min(30, 2**n)
    assert len({round(d, 6) for d in delays}) == len(delays)
    assert max(delays[6:]) > 8  # it does grow past the first few ceilings


def test_reset_only_after_stable_connection() -> None:
    """A short-lived connection keeps the exponent; one that lasted stable_after resets it."""
    backoff = Backoff(initial=1, maximum=100, stable_after=60)
    for _ in range(5):
        backoff.next_delay()
    backoff.connected(now=1000)
    backoff.disconnected(now=1010)
    assert backoff.attempts == 5
    backoff.connected(now=2000)
    backoff.disconnected(now=2060)
    assert backoff.attempts == 0
