"""`systemctl reload` under a real systemd 252 (ExecReload=/bin/kill -HUP $MAINPID, RELOADING=1 then READY=1):
nothing restarts, the new log level takes effect, a bad file is refused in one journal line."""

from __future__ import annotations

import pytest

from .conftest import Host, poll

pytestmark = [pytest.mark.systemd_container, pytest.mark.prosody, pytest.mark.timeout(400)]

AGENT = "xmppmon-agent.service"
TOML = "/etc/xmppmon/agent.toml"
WATCH = ("MainPID", "NRestarts", "ExecMainStartTimestampMonotonic")


def reload(host: Host, expect: str) -> str:
    """`systemctl reload`, then the journal line saying what the reload did, and the unit active again."""
    before = host.journal("-u", AGENT, "-o", "cat").count(expect)
    result = host.container.run(["systemctl", "reload", AGENT], timeout=60)
    assert result.returncode == 0, result.stderr + host.journal("-u", AGENT, "-o", "cat")[-3000:]
    # systemd 252 returns once the signal is sent; the journal and the state say when the reload is over.
    poll(lambda: host.journal("-u", AGENT, "-o", "cat").count(expect) > before, 30, f"{expect!r} in the journal")
    poll(lambda: host.show(AGENT, "ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"},
         30, "the unit active and running again")  # fmt: skip
    return host.journal("-u", AGENT, "-o", "cat")


def debug_lines(host: Host) -> list[str]:
    return [line for line in host.journal("-u", AGENT, "-p", "7..7", "-o", "cat").splitlines() if line]


def test_systemctl_reload_applies_the_log_level_without_a_restart(host: Host) -> None:
    """After `systemctl reload` the DEBUG lines (priority 7) appear, with the same MainPID and NRestarts; a bad file
    is one error line and changes nothing; systemd logs its Reloading/Reloaded lines for each."""
    host.emulator("--rate", "20")
    host.account()
    result = host.container.run(["systemctl", "start", AGENT], timeout=120)
    assert result.returncode == 0, result.stderr
    poll(lambda: host.count("/var/lib/xmppmon/agent.db", "events") > 0, 30, "events in the database")
    running = host.show(AGENT, *WATCH)
    assert running["MainPID"] != "0" and running["NRestarts"] == "0", running
    assert not debug_lines(host), "DEBUG lines at level INFO"

    toml = host.container.sh(f"cat {TOML}")
    host.put(TOML, toml + '[log]\nlevel = "DEBUG"\n', "0644")
    journal = reload(host, "settings reloaded: applied log.level")
    poll(lambda: len(debug_lines(host)) > 10, 30, "DEBUG lines (slixmpp's stanzas) at priority 7")
    assert all(line.startswith("DEBUG") for line in debug_lines(host))
    assert host.show(AGENT, *WATCH) == running, "the reload restarted the agent"
    systemd = [line for line in journal.splitlines() if line.startswith(("Reloading xmppmon", "Reloaded xmppmon"))]
    assert [line.split()[0] for line in systemd] == ["Reloading", "Reloaded"], systemd

    host.put(TOML, toml + '[log]\nlevel = "LOUD"\n', "0644")
    journal = reload(host, "reload refused")
    refusals = [line for line in host.journal("-u", AGENT, "-p", "err", "-o", "cat").splitlines() if "reload" in line]
    assert len(refusals) == 1 and "invalid setting XMPPMON_LOG__LEVEL" in refusals[0], refusals
    assert host.show(AGENT, *WATCH) == running, "the refused reload restarted the agent"
    seen = len(debug_lines(host))
    poll(lambda: len(debug_lines(host)) > seen, 30, "DEBUG lines still coming: the running level stays")
