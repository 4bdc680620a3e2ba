"""Settings from the environment, a TOML file and systemd credentials; bad values are one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_settings
from agent.exceptions import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("XMPPMON_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def test_environment_names_operators_rely_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every documented XMPPMON_* name reaches its setting, nested with __."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {
        "XMPPMON_XMPP__JID": "bot@example.net",
        "XMPPMON_XMPP__PASSWORD": "hunter2",
        "XMPPMON_XMPP__HOST": "10.0.0.1",
        "XMPPMON_XMPP__PORT": "5223",
        "XMPPMON_XMPP__CA_FILE": str(ca),
        "XMPPMON_MONITOR__JID": "monitor.example.net",
        "XMPPMON_MONITOR__APPS": '[{"app": "a1", "key": "k1"}, {"app": "a2", "key": "k2"}]',
        "XMPPMON_MONITOR__NAMESPACE": "urn:x:1",
        "XMPPMON_KEEPALIVE__INTERVAL": "120",
        "XMPPMON_KEEPALIVE__TIMEOUT": "10",
        "XMPPMON_STORE__PATH": str(tmp_path / "m.db"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    assert (s.xmpp.jid, s.xmpp.host, s.xmpp.port, s.xmpp.ca_file) == ("bot@example.net", "10.0.0.1", 5223, ca)
    assert s.xmpp.password.get_secret_value() == "hunter2" and "hunter2" not in repr(s)
    assert [a.app for a in s.monitor.apps] == ["a1", "a2"] and "k1" not in repr(s)
    assert (s.monitor.jid, s.monitor.namespace) == ("monitor.example.net", "urn:x:1")
    assert (s.keepalive.interval, s.keepalive.timeout) == (120, 10)
    assert s.store.path == tmp_path / "m.db"


def test_defaults() -> None:
    """The documented defaults: 240 s pings, the standard namespace, 64 KiB payloads."""
    s = load_settings()
    assert s.keepalive.interval == 240
    assert s.monitor.namespace == "urn:xmppmon:monitor:1"
    assert s.monitor.max_payload_bytes == 65536


def test_interval_at_or_over_ten_minutes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A keepalive of 600 s or more names the 10-minute limit."""
    monkeypatch.setenv("XMPPMON_KEEPALIVE__INTERVAL", "600")
    with pytest.raises(ConfigError, match=r"XMPPMON_KEEPALIVE__INTERVAL: must be under 600 s.*10 minutes"):
        load_settings()


def test_toml_file_and_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The TOML file fills settings; the environment wins over it."""
    path = tmp_path / "x.toml"
    path.write_text('[xmpp]\njid = "a@b"\nport = 5\n[[monitor.apps]]\napp = "x"\nkey = "y"\n')
    monkeypatch.setenv("XMPPMON_XMPP__PORT", "7")
    s = load_settings(path)
    assert (s.xmpp.jid, s.xmpp.port, s.monitor.apps[0].app) == ("a@b", 7, "x")
    monkeypatch.setenv("XMPPMON_CONFIG", str(path))
    assert load_settings().xmpp.jid == "a@b"


def test_credentials_directory_supplies_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Files in $CREDENTIALS_DIRECTORY (systemd LoadCredential=) named like xmpp__password are read."""
    (tmp_path / "xmpp__password").write_text("from-credential")
    (tmp_path / "monitor__apps").write_text('[{"app": "c", "key": "ck"}]')
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    s = load_settings()
    assert s.xmpp.password.get_secret_value() == "from-credential"
    assert s.monitor.apps[0].key.get_secret_value() == "ck"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("XMPPMON_XMPP__JID", "not a jid", "XMPPMON_XMPP__JID"),
        ("XMPPMON_XMPP__PORT", "70000", "XMPPMON_XMPP__PORT"),
        ("XMPPMON_XMPP__CA_FILE", "/nonexistent.pem", "does not exist"),
        ("XMPPMON_MONITOR__APPS", "[{", "cannot read settings"),
        ("XMPPMON_MONITOR__APPS", '[{"app": "a"}]', "XMPPMON_MONITOR__APPS__0__KEY"),
        ("XMPPMON_KEEPALIVE__TIMEOUT", "-1", "XMPPMON_KEEPALIVE__TIMEOUT"),
        ("XMPPMON_XMPP__NO_SUCH", "1", "XMPPMON_XMPP__NO_SUCH"),
    ],
)
def test_bad_values_are_one_clear_line(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    """Each bad value raises ConfigError whose single line names the setting."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings()
    assert "\n" not in str(info.value)


def test_missing_or_broken_toml_file(tmp_path: Path) -> None:
    """A named TOML file that is missing or not TOML is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[xmpp\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_settings(bad)


def test_cli_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    """`xmppmon run` with a bad setting prints one line on stderr, no traceback, and exits 2."""
    env = {"XMPPMON_KEEPALIVE__INTERVAL": "900", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "XMPPMON_KEEPALIVE__INTERVAL" in result.stderr and "Traceback" not in result.stderr
