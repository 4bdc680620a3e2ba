"""xmppmon doctor: one line per check, exit 0 on a good setup and 1 on each kind of bad one."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import StoreSettings
from agent.lab.prosody import ProsodyServer
from agent.store import Store


def doctor(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XMPPMON_", "CREDENTIALS_"))}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "agent", *args, "doctor"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


async def good_setup(tmp_path: Path, prosody: ProsodyServer) -> dict[str, str]:
    db = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=db))
    await store.close()
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / "xmpp__password").write_text("pw-doctor-1")
    return {"XMPPMON_XMPP__JID": "agent@localhost", "XMPPMON_XMPP__CA_FILE": str(prosody.ca_file),
            "XMPPMON_STORE__PATH": str(db), "CREDENTIALS_DIRECTORY": str(creds),
            "XMPPMON_MONITOR__APPS": '[{"app": "demo", "key": "k"}]'}  # fmt: skip


@pytest.mark.prosody
async def test_good_setup_passes(tmp_path: Path, prosody: ProsodyServer) -> None:
    """A migrated private database, a PEM CA and a resolvable host pass with exit code 0."""
    result = doctor(await good_setup(tmp_path, prosody))
    assert result.returncode == 0, result.stdout + result.stderr
    names = [line.split()[1] for line in result.stdout.splitlines()[:-1]]
    assert {"config", "database", "schema", "permissions", "credentials", "ca-file", "server"} <= set(names)
    assert result.stdout.splitlines()[-1].endswith("0 failed")


@pytest.mark.prosody
async def test_bad_setups_fail(tmp_path: Path, prosody: ProsodyServer) -> None:
    """A world-readable database, a corrupt file, a non-PEM CA, an unresolvable host and bad settings each fail."""
    env = await good_setup(tmp_path, prosody)
    db = Path(env["XMPPMON_STORE__PATH"])

    db.chmod(0o644)
    result = doctor(env)
    assert result.returncode == 1 and "FAIL permissions" in result.stdout and "chmod o-rwx" in result.stdout
    db.chmod(0o640)

    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    result = doctor(env | {"XMPPMON_XMPP__CA_FILE": str(not_pem)})
    assert result.returncode == 1 and "FAIL ca-file" in result.stdout

    result = doctor(env | {"XMPPMON_XMPP__HOST": "no-such-host.invalid"})
    assert result.returncode == 1 and "FAIL server" in result.stdout and "does not resolve" in result.stdout

    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x')")
    conn.commit()
    conn.close()
    result = doctor(env)
    assert result.returncode == 1 and "newer than this xmppmon" in result.stdout

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)
    corrupt.chmod(0o600)
    result = doctor(env | {"XMPPMON_STORE__PATH": str(corrupt)})
    assert result.returncode == 1 and "FAIL database" in result.stdout

    result = doctor(env | {"XMPPMON_KEEPALIVE__INTERVAL": "900"})
    assert result.returncode == 1 and result.stdout.startswith("FAIL config")
    assert "pw-doctor-1" not in result.stdout + result.stderr
