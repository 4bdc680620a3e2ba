"""`xmppmon demo`, what the README's first command runs, works end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.prosody
@pytest.mark.timeout(180)
def test_demo_runs_everything_and_stops_cleanly() -> None:
    """The demo starts Prosody, the emulator, the agent and the sidecar, stores events, relays alerts, exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--duration", "6", "--rate", "400"],
        capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "session: connected; stored" in out
    assert "webhook <- firing" in out  # an alert went agent -> outbox -> sidecar -> webhook
    assert "agent exited with code 0, sidecar with code 0" in out
    assert "$ xmppmon alerts" in out and "firing" in out.split("$ xmppmon alerts")[1]
