"""The unit files in systemd/: they verify, and systemd rates each one's exposure at most 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
XMPPMON = Path(sys.executable).with_name("xmppmon")
MAX_EXPOSURE = 2.0


def installed_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointing at this virtualenv's xmppmon, as an installer would do."""
    text = (UNITS / name).read_text().replace("/usr/bin/xmppmon", str(XMPPMON))
    # A template is verified as an instance of itself.
    target = tmp_path / name.replace("@.service", "@demo.service")
    target.write_text(text)
    return target


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        raise pytest.UsageError("systemd-analyze is missing: run make test, which installs systemd")
    return path


@pytest.fixture(
    params=["xmppmon-agent.service", "xmppmon-sidecar.service", "xmppmon-agent@.service", "xmppmon-sidecar@.service"]
)
def unit(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return installed_copy(tmp_path, request.param)


def test_units_verify(unit: Path) -> None:
    """systemd-analyze verify accepts each unit with no warning."""
    result = subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_units_exposure_at_most_two(unit: Path) -> None:
    """systemd-analyze security --offline rates each unit's overall exposure at most 2.0."""
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"{unit.name}: exposure {score} {match.group(2)}")
    assert score <= MAX_EXPOSURE, result.stdout


def test_units_carry_the_required_settings() -> None:
    """Every unit has the hardening and lifecycle settings the operations guide promises."""
    required = [
        "DynamicUser=yes", "User=xmppmon", "StateDirectory=xmppmon", "ConfigurationDirectory=xmppmon",
        "UMask=0027", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
        "PrivateTmp=yes", "PrivateDevices=yes", "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n", "Restart=on-failure", "RestartSec=", "TimeoutStopSec=",
    ]  # fmt: skip
    for name in ("xmppmon-agent.service", "xmppmon-sidecar.service", "xmppmon-agent@.service"):
        text = (UNITS / name).read_text()
        # The agent's password is the agent's alone: an xmpp sink has an account of its own (in sidecar__sinks).
        credential = "LoadCredential=sidecar__sinks:" if "sidecar" in name else "LoadCredential=xmpp__password:"
        missing = [setting for setting in [*required, credential] if setting not in text]
        assert not missing, f"{name} lacks {missing}"
        assert "PASSWORD=" not in text.upper().replace("XMPP__PASSWORD:", "")
    agent = (UNITS / "xmppmon-agent@.service").read_text()
    assert "Type=notify" in agent and "WatchdogSec=" in agent
    assert "/etc/xmppmon/%i.toml" in agent and "/var/lib/xmppmon/%i.db" in agent
    sidecar = (UNITS / "xmppmon-sidecar.service").read_text()
    assert "ExecStart=/usr/bin/xmppmon sidecar" in sidecar
    assert "LoadCredential=xmpp__password" not in sidecar


def test_units_reload_with_sighup() -> None:
    """`systemctl reload` sends SIGHUP to the main process of each unit (agent.reload re-reads the settings)."""
    for name in ("xmppmon-agent.service", "xmppmon-sidecar.service", "xmppmon-agent@.service"):
        lines = (UNITS / name).read_text().splitlines()
        assert [line for line in lines if line.startswith("ExecReload=")] == ["ExecReload=/bin/kill -HUP $MAINPID"], (
            name
        )
