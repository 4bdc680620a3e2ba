"""A second `make install`, then `make uninstall`, on a live systemd (the first install is the container fixture's).

The conftest runs this module last: uninstalling takes away what the other tests use.
"""

from __future__ import annotations

import pytest

from .conftest import Host, install

pytestmark = [pytest.mark.systemd_container, pytest.mark.prosody, pytest.mark.timeout(400)]

OURS = [
    "/usr/bin/xmppmon", "/opt/xmppmon", "/etc/systemd/system/xmppmon-agent.service",
    "/etc/systemd/system/xmppmon-agent@.service", "/etc/systemd/system/xmppmon-sidecar.service",
    "/etc/xmppmon/agent.toml.example", "/etc/xmppmon/agent.env.example", "/etc/xmppmon/agent.env",
]  # fmt: skip
OPERATORS = ["/etc/xmppmon/agent.toml", "/etc/xmppmon/credentials/xmpp__password", "/etc/xmppmon/credentials/shop"]


def exists(host: Host, path: str) -> bool:
    return host.container.run(["sh", "-c", 'test -e "$0" || test -L "$0"', path]).returncode == 0


def test_second_install_keeps_the_operators_files_and_uninstall_removes_only_ours(host: Host) -> None:
    """Installing again upgrades in place and keeps the operator's files; uninstall stops, disables and removes ours."""
    box = host.container
    host.put("/etc/xmppmon/agent.toml", '[xmpp]\njid = "ops@example.net"\n', "0644")
    host.put("/etc/xmppmon/credentials/xmpp__password", "s3cret", "0600")
    host.put("/etc/xmppmon/credentials/shop/xmpp__password", "s3cret-too", "0600")
    host.put("/etc/systemd/system/xmppmon-agent.service.d/override.conf", "[Service]\nRestartSec=7\n", "0644")
    python = box.sh("stat -c %i /opt/xmppmon/bin/python3")

    again = install(box)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "kept /etc/xmppmon/agent.toml" in again.stdout and "systemctl daemon-reload: done" in again.stdout
    assert box.sh("stat -c %i /opt/xmppmon/bin/python3") == python  # upgraded in place, not remade
    assert box.sh("cat /etc/xmppmon/agent.toml") == '[xmpp]\njid = "ops@example.net"\n'
    secrets = "/etc/xmppmon/credentials/xmpp__password /etc/xmppmon/credentials/shop/xmpp__password"
    assert box.sh(f"cat {secrets}") == "s3cret" + "s3cret-too"
    assert box.sh("stat -c %a /etc/xmppmon/credentials").strip() == "700"
    assert host.show("xmppmon-agent.service", "RestartUSec")["RestartUSec"] == "7s"  # the drop-in still applies

    box.sh("systemctl enable xmppmon-agent.service xmppmon-agent@shop.service")
    gone = box.run(["make", "-C", "/srv/xmppmon", "uninstall"], timeout=120)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert [path for path in OURS if exists(host, path)] == []
    assert [path for path in OPERATORS if not exists(host, path)] == []
    assert "kept /etc/xmppmon/agent.toml (changed since make install)" in gone.stdout
    wants = box.sh("ls /etc/systemd/system/multi-user.target.wants/")
    assert "xmppmon" not in wants, wants  # disabled, instances included: no dangling links
    unit = box.run(["systemctl", "cat", "xmppmon-agent@shop.service"])
    assert unit.returncode != 0 and "No files found" in unit.stderr, unit  # daemon-reload ran
