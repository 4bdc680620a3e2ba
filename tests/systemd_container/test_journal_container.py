"""Priorities and fields in the real journald of the container (agent/journal.py).

The formatting itself is unit-tested on the host in tests/test_journal.py.
"""

from __future__ import annotations

import json

import pytest

from .conftest import Host, poll

pytestmark = [pytest.mark.systemd_container, pytest.mark.prosody, pytest.mark.timeout(400)]

AGENT = "xmppmon-agent.service"
REFUSED = "subscription of app blocked refused"


@pytest.fixture
def refused(host: Host) -> Host:
    """The agent running with two apps, ``demo`` subscribed and ``blocked`` refused (401)."""
    host.emulator("--rate", "5", "--app", "demo:demo-key", "--app", "blocked:k", "--refuse", "blocked=401")
    host.account(apps=[{"app": "demo", "key": "demo-key"}, {"app": "blocked", "key": "k"}])
    result = host.container.run(["systemctl", "start", AGENT], timeout=120)
    assert result.returncode == 0, result.stderr
    poll(lambda: REFUSED in host.journal("-u", AGENT, "-o", "cat"), 30, "the refused subscription in the journal")
    return host


def test_priority_warning_shows_the_refusal_and_no_info_line(refused: Host) -> None:
    """`journalctl -u xmppmon-agent -p warning` shows the refused subscription and not one info line."""
    everything = refused.journal("-u", AGENT, "-o", "cat")
    assert "INFO    session: subscribed to app demo [app=demo]" in everything  # info lines exist...
    warnings = refused.journal("-u", AGENT, "-p", "warning", "-o", "cat").splitlines()
    assert any(REFUSED in line for line in warnings), warnings
    assert not [line for line in warnings if line.startswith(("INFO", "DEBUG"))], warnings  # ...and are filtered out
    errors = refused.journal("-u", AGENT, "-p", "err", "-o", "cat")
    assert REFUSED in errors
    entries = [json.loads(line) for line in refused.journal("-u", AGENT, "-o", "json").splitlines()]
    refusal = next(e for e in entries if REFUSED in e["MESSAGE"])
    assert (refusal["PRIORITY"], refusal["_TRANSPORT"], refusal["COMPONENT"]) == ("3", "journal", "session")


def test_app_field_filters_one_application(refused: Host) -> None:
    """`journalctl -u xmppmon-agent APP=…` keeps the lines bound to that application only."""
    demo = refused.journal("-u", AGENT, "APP=demo", "-o", "cat")
    blocked = refused.journal("-u", AGENT, "APP=blocked", "-o", "cat")
    assert "subscribed to app demo" in demo and "blocked" not in demo, demo
    assert REFUSED in blocked and "app demo" not in blocked, blocked


def test_without_the_native_socket_the_prefix_sets_the_priority(host: Host) -> None:
    """Through the stdout/stderr stream alone, journald reads the <N> prefix: -p warning drops the info line."""
    script = (
        "import agent.journal; agent.journal.SOCKET = '/nonexistent'\n"
        "from agent.config import LogSettings\nfrom agent.logs import setup_logging\nfrom loguru import logger\n"
        "setup_logging(LogSettings())\nlogger.info('plain info line')\nlogger.warning('prefixed warning line')\n"
    )
    unit = "xmppmon-prefix-test.service"
    host.container.run(
        ["systemd-run", "--quiet", "--wait", "--collect", f"--unit={unit}", "/opt/xmppmon/bin/python", "-c", script],
        timeout=60, check=True,
    )  # fmt: skip
    everything = poll(lambda: (lambda j: j if "prefixed warning" in j else None)(host.journal("-u", unit, "-o", "cat")),
                      10, "the lines")  # fmt: skip
    assert "INFO    xmppmon: plain info line" in everything and "<" not in everything, everything
    warnings = host.journal("-u", unit, "-p", "warning", "-o", "cat")
    assert "WARNING xmppmon: prefixed warning line" in warnings and "plain info" not in warnings, warnings
    entries = [json.loads(line) for line in host.journal("-u", unit, "-o", "json").splitlines()]
    warning = next(e for e in entries if "prefixed warning" in e["MESSAGE"])
    assert (warning["PRIORITY"], warning["_TRANSPORT"]) == ("4", "stdout"), warning
