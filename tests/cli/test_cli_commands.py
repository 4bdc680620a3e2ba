"""`xmppmon query`, `tail` and `status` as an operator runs them: real processes, a real database."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import StoreSettings
from agent.events import parse_event
from agent.store import Store


def xmppmon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """A database with three events and one API call, written by the real store."""
    store = await Store.open(StoreSettings(path=tmp_path / "m.db"))
    events = [
        parse_event({"id": f"e-{n}", "kind": "activity", "app": "demo", "ts": f"2026-11-22T10:00:0{n}.000Z"},
                    json.dumps({"device_id": f"d-{n}"}), 65536)
        for n in range(3)
    ] + [parse_event({"id": "a-1", "kind": "api", "app": "demo", "ts": "2026-11-22T10:00:05.000Z"},
                     '{"api": "reach", "status": 504}', 65536)]  # fmt: skip
    store.submit_events(events, "2026-11-22T10:00:06.000Z")
    store.set_state("subscriptions", '{"demo": "ok"}')
    await store.barrier()
    await store.close()
    return tmp_path / "m.db"


async def test_query_prints_table_csv_and_json(db: Path) -> None:
    """One statement, three formats, the same rows."""
    sql = "SELECT event_id, kind FROM events ORDER BY event_id"
    table = xmppmon("query", sql, "--database", str(db))
    assert table.returncode == 0 and "e-0" in table.stdout and "(3 rows)" in table.stdout
    rows = list(csv.reader(io.StringIO(xmppmon("query", sql, "--csv", "--database", str(db)).stdout)))
    assert rows == [["event_id", "kind"], ["e-0", "activity"], ["e-1", "activity"], ["e-2", "activity"]]
    lines = xmppmon("query", sql, "--json", "--database", str(db)).stdout.splitlines()
    assert [json.loads(line)["event_id"] for line in lines] == ["e-0", "e-1", "e-2"]


async def test_query_cannot_write_and_says_why(db: Path) -> None:
    """A write statement fails with one clear line and exit 1; the data is untouched."""
    result = xmppmon("query", "DELETE FROM events", "--database", str(db))
    assert result.returncode == 1 and "query failed" in result.stderr and "Traceback" not in result.stderr
    assert "3" in xmppmon("query", "SELECT count(*) FROM events", "--database", str(db)).stdout


def test_missing_database_is_one_clear_line(tmp_path: Path) -> None:
    """status, query and tail on a database that does not exist: exit 1, one line, no traceback."""
    for command in (["status"], ["query", "SELECT 1"], ["tail", "--duration", "1"]):
        result = xmppmon(*command, "--database", str(tmp_path / "none.db"))
        assert result.returncode == 1, command
        assert result.stderr.count("\n") == 1 and "does not exist" in result.stderr, result.stderr


async def test_tail_shows_the_last_rows_and_follows(db: Path) -> None:
    """tail starts with the last N events and prints new ones as they are committed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "tail", "-n", "2", "--interval", "0.1", "--duration", "4", "--database", str(db)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    first = [proc.stdout.readline(), proc.stdout.readline()]  # the last two, before anything new
    store = await Store.open(StoreSettings(path=db))
    store.submit_events(
        [parse_event({"id": "late-1", "kind": "crash", "app": "demo", "ts": "2026-11-22T10:01:00.000Z"},
                     '{"device_id": "d-9"}', 65536)],
        "now",
    )  # fmt: skip
    await store.barrier()
    await store.close()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    ids = [line.split()[-1] for line in [*first, *out.splitlines()]]
    assert ids == ["e-1", "e-2", "late-1"]


async def test_status_shows_counts_and_no_secret(db: Path, tmp_path: Path) -> None:
    """status reads the database alone; configured secrets never appear in it."""
    env_secret = "s3cret-password-xyz"
    result = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--database", str(db)],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "XMPPMON_XMPP__PASSWORD": env_secret,
             "XMPPMON_MONITOR__APPS": '[{"app": "demo", "key": "api-key-xyz"}]'},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "events=3" in result.stdout and "api_calls=1" in result.stdout and "demo=ok" in result.stdout
    assert env_secret not in result.stdout + result.stderr and "api-key-xyz" not in result.stdout + result.stderr


async def test_export_goes_to_the_configured_folder(db: Path, tmp_path: Path) -> None:
    """Without --dest, `export create` writes into XMPPMON_EXPORT__DIR: data and manifest."""
    out = tmp_path / "exports-here"
    result = subprocess.run(
        [sys.executable, "-m", "agent", "export", "create", "--history", "activity", "--from", "2026-11-22",
         "--database", str(db)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "XMPPMON_EXPORT__DIR": str(out)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert any("manifest" in n for n in names) and any(n.endswith(".jsonl.gz") for n in names), names
