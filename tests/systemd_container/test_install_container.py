"""`make uninstall` and a second `make install` on a live systemd (the first install is the container fixture's)."""

from __future__ import annotations

import pytest

from .conftest import SRC, Host

pytestmark = [pytest.mark.systemd_container, pytest.mark.prosody, pytest.mark.timeout(400)]

OURS = [
    "/usr/bin/xmppmon", "/opt/xmppmon", "/etc/systemd/system/xmppmon-agent.service",
    "/etc/systemd/system/xmppmon-agent@.service", "/etc/systemd/system/xmppmon-sidecar.service",
    "/etc/xmppmon/agent.toml.example", "/etc/xmppmon/agent.env.example", "/etc/xmppmon/agent.env",
]  # fmt: skip
OPERATORS = ["/etc/xmppmon/agent.toml", "/etc/xmppmon/credentials/xmpp__password", "/etc/xmppmon/credentials/shop"]


def exists(host: Host, path: str) -> bool:
    return (
        host.container.run(["test", "-e", path]).returncode == 0
        or host.container.run(["test", "-L", path]).returncode == 0
    )


def test_uninstall_removes_what_install_added_and_reinstall_keeps_the_operators_files(host: Host) -> None:
    """Uninstall stops and disables the units and removes our files only; installing again finds the operator's intact."""
    box = host.container
    host.put("/etc/xmppmon/agent.toml", '[xmpp]\njid = "ops@example.net"\n', "0644")
    host.put("/etc/xmppmon/credentials/xmpp__password", "s3cret", "0600")
    host.put("/etc/xmppmon/credentials/shop/xmpp__password", "s3cret-too", "0600")
    box.sh("systemctl enable xmppmon-agent.service xmppmon-agent@shop.service")
    try:
        gone = box.run(["make", "-C", SRC, "uninstall"], timeout=120)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert [path for path in OURS if exists(host, path)] == []
        assert [path for path in OPERATORS if not exists(host, path)] == []
        assert "kept /etc/xmppmon/agent.toml (changed since make install)" in gone.stdout
        wants = box.sh("ls /etc/systemd/system/multi-user.target.wants/")
        assert "xmppmon" not in wants, wants  # disabled, instances included: no dangling links
        unit = box.run(["systemctl", "cat", "xmppmon-agent.service"])
        assert unit.returncode != 0 and "No files found" in unit.stderr, unit  # daemon-reload ran
    finally:
        again = box.run(
            ["make", "-C", SRC, "install"], env={"PIP_CERT": "/srv/host-ca.pem", "HOME": "/root"}, timeout=300
        )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "kept /etc/xmppmon/agent.toml" in again.stdout and "systemctl daemon-reload: done" in again.stdout
    assert box.sh("cat /etc/xmppmon/agent.toml") == '[xmpp]\njid = "ops@example.net"\n'
    assert box.sh("cat /etc/xmppmon/credentials/xmpp__password /etc/xmppmon/credentials/shop/xmpp__password") == (
        "s3cret" + "s3cret-too"
    )
    assert box.sh("stat -c %a /etc/xmppmon/credentials").strip() == "700"
    assert box.run(["systemctl", "cat", "xmppmon-agent.service"]).returncode == 0
