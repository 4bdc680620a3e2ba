"""The XMPP sink needs an account of its own (issue 10, defect 8): its initial presence on the agent's account
would draw the agent's offline messages. A missing account or the agent's own JID is one configuration line,
exit code 2, at the sidecar's start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_settings
from agent.exceptions import ConfigError

XMPPMON = [sys.executable, "-m", "agent"]


def sidecar_env(db: Path, sink: dict[str, object]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMPPMON_")}
    env.update({
        "XMPPMON_XMPP__JID": "agent@example.net/xmppmon",
        "XMPPMON_XMPP__PASSWORD": "agent-secret",
        "XMPPMON_STORE__PATH": str(db),
        "XMPPMON_SIDECAR__SINKS": json.dumps([sink]),
        "XMPPMON_SIDECAR__POLL_SECONDS": "0.05",
    })  # fmt: skip
    return env


def start_sidecar(db: Path, sink: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """Run ``xmppmon sidecar``; a sidecar that accepted the sink keeps running: stop it and say so."""
    proc = subprocess.Popen([*XMPPMON, "sidecar"], env=sidecar_env(db, sink), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"the sidecar started with this sink instead of refusing it:\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_xmpp_sink_without_an_account_is_refused_at_start(tmp_path: Path) -> None:
    """An xmpp sink without jid and password is one configuration line and exit code 2, not a login as the agent."""
    result = start_sidecar(tmp_path / "m.db", {"type": "xmpp", "jids": ["ops@example.net"]})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("xmppmon: configuration error:"), lines
    assert "account of its own" in lines[0] and "XMPPMON_SIDECAR__SINKS" in lines[0]
    assert "agent-secret" not in result.stderr
    assert not (tmp_path / "m.db").exists(), "nothing is created when the configuration is refused"


@pytest.mark.parametrize("jid", ["agent@example.net", "Agent@Example.NET/other-resource"])
def test_xmpp_sink_on_the_agents_own_account_is_refused_at_start(tmp_path: Path, jid: str) -> None:
    """An xmpp sink whose jid is the agent's bare JID (any resource, any case) is refused with one line, exit 2."""
    sink = {"type": "xmpp", "jids": ["ops@example.net"], "jid": jid, "password": "agent-secret"}
    result = start_sidecar(tmp_path / "m.db", sink)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("xmppmon: configuration error:"), lines
    assert "agent@example.net" in lines[0] and "XMPPMON_XMPP__JID" in lines[0] and "offline" in lines[0]
    assert "agent-secret" not in result.stderr
    assert not (tmp_path / "m.db").exists(), "nothing is created when the configuration is refused"


def test_xmpp_sink_with_its_own_account_is_accepted() -> None:
    """A sink with an account of its own loads; its jid and password are its own."""
    settings = load_settings(
        None,
        xmpp={"jid": "agent@example.net", "password": "a-pass"},
        sidecar={"sinks": [{"type": "xmpp", "jids": ["ops@example.net"], "jid": "relay@example.net",
                            "password": "r-pass"}]},
    )  # fmt: skip
    (name, sink), *_ = settings.sidecar.named_sinks()
    assert name == "xmpp" and getattr(sink, "jid", None) == "relay@example.net"
    with pytest.raises(ConfigError, match="account of its own"):
        load_settings(None, sidecar={"sinks": [{"type": "xmpp", "jids": ["o@x.net"], "jid": "relay@example.net"}]})
