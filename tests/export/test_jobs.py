"""Export jobs: job rows, gzip JSON Lines and CSV, manifest with SHA-256, atomic files, CLI."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from agent.config import StoreSettings
from agent.export import ExportError, create_job, get_job, list_jobs, parse_time, run_job
from agent.store import Store

XMPPMON = [sys.executable, "-m", "agent"]


async def make_db(path: Path) -> Path:
    """A migrated database with a few history events, api calls and state rows."""
    store = await Store.open(StoreSettings(path=path))
    await store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO events (event_id, app, kind, ts, payload, received_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(f"e{i}", "demo", "crash" if i % 2 else "event", f"2024-05-01T00:00:{i:02d}.000Z",
              orjson.dumps({"n": i, "name": f"ev {i}"}).decode(), "2024-05-01T00:01:00.000Z") for i in range(20)],
        )  # fmt: skip
        conn.execute(
            "INSERT INTO tags (app, device_id, name, value, ts, event_id, received_at) VALUES"
            " ('demo', 'd1', 'plan', '\"gold\"', '2024-05-01T00:00:00.000Z', 't1', '2024-05-01T00:00:00.000Z'),"
            " ('demo', 'd2', 'plan', NULL, '2024-05-01T00:00:00.000Z', 't2', '2024-05-01T00:00:00.000Z')"
        )
    conn.close()
    return path


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


async def test_history_export_writes_data_and_manifest(tmp_path: Path) -> None:
    """A history job goes queued -> succeeded and writes the period's rows, with a manifest that matches the files."""
    db = await make_db(tmp_path / "m.db")
    dest = tmp_path / "out"
    job_id = create_job(db, "history", "crash", dest, from_ts=parse_time("2024-05-01T00:00:05Z"),
                        to_ts=parse_time("2024-05-01T00:00:15Z"), csv_too=True)  # fmt: skip
    assert get_job(db, job_id).state == "queued"
    job = run_job(db, job_id)
    assert (job.state, job.rows, job.error) == ("succeeded", 5, None)
    manifest = orjson.loads(Path(job.manifest or "").read_bytes())
    assert manifest["rows"] == 5 and {f["format"] for f in manifest["files"]} == {"jsonl", "csv"}
    for entry in manifest["files"]:
        data = (dest / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert job.bytes == sum(f["bytes"] for f in manifest["files"])
    rows = read_jsonl(dest / f"{job.stem}.jsonl.gz")
    assert [r["event_id"] for r in rows] == ["e5", "e7", "e9", "e11", "e13"]
    assert rows[0]["payload"] == {"n": 5, "name": "ev 5"}  # embedded as JSON, not a string
    table = list(csv.reader(io.StringIO(gzip.decompress((dest / f"{job.stem}.csv.gz").read_bytes()).decode())))
    assert table[0] == ["event_id", "app", "kind", "ts", "received_at", "payload"] and len(table) == 6
    assert sorted(os.listdir(dest)) == sorted(
        [f"{job.stem}.jsonl.gz", f"{job.stem}.csv.gz", f"{job.stem}.manifest.json"]
    )


async def test_snapshot_export_and_null_json_values(tmp_path: Path) -> None:
    """A tag snapshot exports every row, JSON values decoded and NULL as null."""
    db = await make_db(tmp_path / "m.db")
    job = run_job(db, create_job(db, "snapshot", "tag", tmp_path / "out"))
    rows = read_jsonl(tmp_path / "out" / f"{job.stem}.jsonl.gz")
    assert [(r["device_id"], r["value"]) for r in rows] == [("d1", "gold"), ("d2", None)]


async def test_failed_export_leaves_no_partial_files(tmp_path: Path) -> None:
    """When the destination cannot be written, the job is failed with the error and nothing is left behind."""
    db = await make_db(tmp_path / "m.db")
    dest = tmp_path / "ro"
    dest.mkdir()
    dest.chmod(0o500)
    if os.access(dest, os.W_OK):  # root ignores the mode: make the folder a file instead
        dest.chmod(0o700)
        dest.rmdir()
        dest.write_text("not a folder")
    job_id = create_job(db, "snapshot", "device", dest)
    with pytest.raises(ExportError, match="failed"):
        run_job(db, job_id)
    job = get_job(db, job_id)
    assert job.state == "failed" and job.error and job.finished_at
    assert not [p for p in tmp_path.rglob(".*.tmp")]


async def test_requests_are_validated(tmp_path: Path) -> None:
    """History needs --from; snapshots refuse a period; times must parse; --to after --from."""
    db = await make_db(tmp_path / "m.db")
    with pytest.raises(ExportError, match="--from"):
        create_job(db, "history", "event", tmp_path)
    with pytest.raises(ExportError, match="history exports only"):
        create_job(db, "snapshot", "tag", tmp_path, from_ts="2024-01-01T00:00:00.000Z")
    with pytest.raises(ExportError, match="must be after"):
        create_job(
            db, "history", "event", tmp_path, from_ts="2024-02-01T00:00:00.000Z", to_ts="2024-01-01T00:00:00.000Z"
        )
    with pytest.raises(ExportError, match="RFC 3339"):
        parse_time("yesterday")
    assert parse_time("2024-05-01") == "2024-05-01T00:00:00.000Z"
    assert parse_time("2024-05-01T02:00:00+02:00") == "2024-05-01T00:00:00.000Z"
    assert list_jobs(db) == []


async def test_cli_create_list_status_and_background(tmp_path: Path) -> None:
    """xmppmon export create/list/status work end to end, in the foreground and with --background."""
    db = await make_db(tmp_path / "m.db")
    base = [*XMPPMON, "export"]
    done = subprocess.run([*base, "create", "--history", "event", "--from", "2024-05-01", "--to", "2024-05-02",
                           "--database", str(db), "--dest", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "export job 1 succeeded: 10 rows" in done.stdout
    assert done.stderr == ""  # no progress line when stderr is not a terminal
    subprocess.run([*base, "create", "--snapshot", "token", "--background", "--database", str(db),
                    "--dest", str(tmp_path / "out")], check=True, capture_output=True, timeout=60)  # fmt: skip
    import time

    deadline = time.monotonic() + 20
    while get_job(db, 2).state not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, "background export did not finish"
        time.sleep(0.05)
    assert get_job(db, 2).state == "succeeded" and get_job(db, 2).rows == 0
    listed = subprocess.run([*base, "list", "--json", "--database", str(db)], capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    assert [orjson.loads(line)["state"] for line in listed.stdout.splitlines()] == ["succeeded", "succeeded"]
    status = subprocess.run([*base, "status", "1", "--database", str(db)], capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    assert "succeeded" in status.stdout and "10" in status.stdout
    missing = subprocess.run([*base, "status", "99", "--database", str(db)], capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
    assert missing.returncode == 1 and "no export job 99" in missing.stderr
