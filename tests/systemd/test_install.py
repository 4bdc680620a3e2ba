"""`make install` / `make uninstall` staged into a DESTDIR on the host (no systemd needed).

The real install, with systemd running, is tested in the container (tests/systemd_container/).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("xmppmon-agent.service", "xmppmon-agent@.service", "xmppmon-sidecar.service")


def make(target: str, **variables: str) -> subprocess.CompletedProcess[str]:
    # The system's python3 builds the virtualenv, as for an operator: never this test run's .venv.
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith(sys.prefix))
    # Only xmppmon itself, not its dependencies: this keeps the test fast; the container tests
    # install everything and run it.
    env = {**os.environ, "PATH": path, "PIP_NO_DEPS": "1"}
    env.pop("VIRTUAL_ENV", None)
    args = ["make", "--no-print-directory", "-C", str(ROOT), target, *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.timeout(600)
def test_install_twice_then_uninstall_keeps_the_operators_files(tmp_path: Path) -> None:
    """Install stages a working tree; a second install keeps the operator's edits; uninstall removes only the rest."""
    dest = tmp_path / "root"
    first = make("install", DESTDIR=str(dest))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "skipped systemctl daemon-reload: DESTDIR is set" in first.stdout

    venv = dest / "opt/xmppmon"
    link = dest / "usr/bin/xmppmon"
    assert os.readlink(link) == "/opt/xmppmon/bin/xmppmon"  # the final path, not the staging one
    assert (venv / "bin/xmppmon").read_text().splitlines()[0] == "#!/opt/xmppmon/bin/python"
    version = subprocess.run(
        [venv / "bin/python", "-c", "import importlib.metadata as m; print(m.version('xmppmon'))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert version.stdout.strip() == "0.1.0", version
    for unit in UNITS:
        text = (dest / "etc/systemd/system" / unit).read_text()
        assert text == (ROOT / "systemd" / unit).read_text()  # ExecStart=/usr/bin/xmppmon as shipped
        assert mode(dest / "etc/systemd/system" / unit) == 0o644
    conf = dest / "etc/xmppmon"
    assert mode(conf) == 0o755 and mode(conf / "credentials") == 0o700
    assert sorted(p.name for p in conf.iterdir()) == [
        "agent.env", "agent.env.example", "agent.toml", "agent.toml.example", "credentials",
    ]  # fmt: skip
    assert (conf / "agent.toml").read_text() == (ROOT / "systemd/agent.toml.example").read_text()
    assert all(line.startswith("#") for line in (conf / "agent.env").read_text().splitlines() if line)

    # The operator configures it: an edited TOML, a credential, an enabled unit's drop-in.
    (conf / "agent.toml").write_text('[xmpp]\njid = "ops@example.net"\n')
    (conf / "credentials/xmpp__password").write_text("s3cret")
    dropin = dest / "etc/systemd/system/xmppmon-agent.service.d"
    dropin.mkdir()
    (dropin / "override.conf").write_text("[Service]\nWatchdogSec=30\n")

    second = make("install", DESTDIR=str(dest))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept /etc/xmppmon/agent.toml" in second.stdout
    assert (conf / "agent.toml").read_text() == '[xmpp]\njid = "ops@example.net"\n'
    assert (conf / "credentials/xmpp__password").read_text() == "s3cret"

    gone = make("uninstall", DESTDIR=str(dest))
    assert gone.returncode == 0, gone.stdout + gone.stderr
    left = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert left == [
        "etc", "etc/systemd", "etc/systemd/system",
        "etc/systemd/system/xmppmon-agent.service.d", "etc/systemd/system/xmppmon-agent.service.d/override.conf",
        "etc/xmppmon", "etc/xmppmon/agent.toml", "etc/xmppmon/credentials", "etc/xmppmon/credentials/xmpp__password",
    ], left  # fmt: skip
    assert "kept /etc/xmppmon/agent.toml (changed since make install)" in gone.stdout


def test_install_refuses_a_prefix_it_does_not_own(tmp_path: Path) -> None:
    """A non-empty PREFIX that is not an xmppmon installation is refused in one line (uninstall would delete it)."""
    dest = tmp_path / "root"
    (dest / "usr/local/lib").mkdir(parents=True)
    result = make("install", DESTDIR=str(dest), PREFIX="/usr/local")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[0] == (
        f"make install: {dest}/usr/local exists and is not an xmppmon installation: choose another PREFIX"
    )
    assert sorted(p.name for p in (dest / "usr/local").iterdir()) == ["lib"]


def test_install_refuses_to_replace_another_xmppmon_command(tmp_path: Path) -> None:
    """An existing BINDIR/xmppmon that is not ours is left alone, with one line saying so."""
    dest = tmp_path / "root"
    (dest / "usr/bin").mkdir(parents=True)
    (dest / "usr/bin/xmppmon").write_text("#!/bin/sh\n")
    result = make("install", DESTDIR=str(dest))
    assert result.returncode != 0
    assert "usr/bin/xmppmon exists and is not a link to /opt/xmppmon/bin/xmppmon" in result.stderr
    assert not (dest / "opt").exists()


def test_uninstall_without_an_installation_says_so(tmp_path: Path) -> None:
    """`make uninstall` where nothing was installed fails with one line and removes nothing."""
    dest = tmp_path / "root"
    dest.mkdir()
    result = make("uninstall", DESTDIR=str(dest))
    assert result.returncode != 0
    assert f"make uninstall: nothing to uninstall: {dest}/opt/xmppmon/install-manifest does not exist" in result.stderr
