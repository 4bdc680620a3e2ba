"""Exports to an Azure Storage container, against a real Azurite: round trip row for row, every failure, the secret."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import os
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from agent.config import StoreSettings
from agent.export import get_job, list_jobs, requests_of
from agent.lab.azurite import AzuriteServer
from agent.lab.proxy import CuttingProxy
from agent.store import Store

pytestmark = [pytest.mark.azurite, pytest.mark.timeout(180)]

ROWS = 3000
BLOCK = "16384"  # small blocks: a few hundred KB of export makes many of them
_names = itertools.count(1)


async def make_db(path: Path, rows: int = ROWS) -> Path:
    store = await Store.open(StoreSettings(path=path))
    await store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO events (event_id, app, kind, ts, payload, received_at) VALUES (?, 'demo', 'event', ?, ?, ?)",
            ((f"ev-{i:06d}", f"2024-05-01T00:{i // 60000:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
              orjson.dumps({"device_id": f"d-{i % 97}", "n": i, "text": f"é \"q\" {os.urandom(12).hex()}"}).decode(),
              "2024-05-01T01:00:00.000Z") for i in range(rows)),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO tags (app, device_id, name, value, ts, event_id, received_at) VALUES"
            " ('demo', 'd1', 'plan', '\"gold\"', '2024-05-01T00:00:00.000Z', 't1', '2024-05-01T00:00:00.000Z')"
        )
    conn.close()
    return path


def container(azurite: AzuriteServer) -> str:
    name = f"exports-{next(_names)}-{os.getpid()}"
    azurite.create_container(name)
    return name


def cli(db: Path, *args: str, sas: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("XMPPMON_")}
    environ |= {"XMPPMON_AZURE__BLOCK_SIZE": BLOCK, "XMPPMON_AZURE__BACKOFF_INITIAL": "0.05", **env}
    if sas is not None:
        environ["XMPPMON_AZURE__SAS"] = sas
    return subprocess.run([sys.executable, "-m", "agent", "export", *args, "--database", str(db)],
                          capture_output=True, text=True, timeout=120, check=False, env=environ)  # fmt: skip


def history(dest: str) -> list[str]:
    return ["create", "--history", "event", "--from", "2024-05-01", "--to", "2024-05-02", "--dest", dest]


def db_rows(db: Path) -> list[dict[str, object]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT event_id, app, kind, ts, received_at, payload FROM events ORDER BY ts, event_id")
        return [{"event_id": r[0], "app": r[1], "kind": r[2], "ts": r[3], "received_at": r[4],
                 "payload": orjson.loads(r[5])} for r in rows]  # fmt: skip
    finally:
        conn.close()


def secret_free(db: Path, sas: str) -> None:
    """The token's signature is in no byte of the database, its WAL, or any export_jobs column."""
    sig = next(p for p in sas.split("&") if p.startswith("sig=")).split("=", 1)[1]
    for path in db.parent.glob(db.name + "*"):
        data = path.read_bytes()
        assert sig.encode() not in data and sas.encode() not in data, path


async def test_history_export_reaches_azurite_and_downloads_back_identical(
    azurite: AzuriteServer, tmp_path: Path
) -> None:
    """JSON Lines and CSV go up in staged blocks with a commit, the manifest last; what downloads equals the database row
    for row; every request is recorded with both ids; the job row shows rows and bytes; the SAS is nowhere."""
    db = await make_db(tmp_path / "m.db")
    name = container(azurite)
    sas = azurite.sas(name)
    done = cli(db, *history(azurite.container_url(name)), "--csv", sas=sas)
    assert done.returncode == 0, done.stderr
    assert f"export job 1 succeeded: {ROWS} rows" in done.stdout
    assert sas not in done.stdout + done.stderr and "sig=" not in done.stderr
    assert "━" not in done.stderr  # a pipe gets no progress bar
    assert "commit_block_list history/event/1/part-00000.jsonl.gz: 201" in done.stderr  # the log, with its ids
    assert "x-ms-request-id" in done.stderr and "client_request_id=" in done.stderr

    blobs = azurite.blobs(name)
    assert sorted(blobs) == ["history/event/1/manifest.json", "history/event/1/part-00000.csv.gz",
                             "history/event/1/part-00000.jsonl.gz"]  # fmt: skip
    manifest = orjson.loads(azurite.download(name, "history/event/1/manifest.json"))
    assert manifest["rows"] == ROWS and manifest["container"] == azurite.container_url(name)
    for entry in manifest["files"]:
        data = azurite.download(name, f"history/event/1/{entry['name']}")
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    jsonl = azurite.download(name, "history/event/1/part-00000.jsonl.gz")
    assert [orjson.loads(line) for line in gzip.decompress(jsonl).splitlines()] == db_rows(db)
    table = list(
        csv.reader(io.StringIO(gzip.decompress(azurite.download(name, "history/event/1/part-00000.csv.gz")).decode()))
    )
    assert table[0] == ["event_id", "app", "kind", "ts", "received_at", "payload"]
    assert [dict(zip(table[0], r, strict=True)) | {"payload": orjson.loads(r[5])} for r in table[1:]] == db_rows(db)

    job = get_job(db, 1)
    assert (job.state, job.rows, job.rows_done, job.rows_total) == ("succeeded", ROWS, ROWS, ROWS)
    assert job.bytes == job.bytes_done == job.bytes_total == sum(f["bytes"] for f in manifest["files"])
    assert job.destination == azurite.container_url(name) and job.request_id and job.client_request_id
    assert job.manifest == f"{azurite.container_url(name)}/history/event/1/manifest.json"
    sent = requests_of(db, 1)
    stages = [r for r in sent if r["operation"] == "stage_block"]
    assert len(stages) == sum(-(-f["bytes"] // int(BLOCK)) for f in manifest["files"]) + 1  # + the write check
    assert all(r["http_status"] == 201 and r["request_id"] for r in stages)
    assert len({r["client_request_id"] for r in sent}) == len(sent)  # a fresh one per request
    assert [r["operation"] for r in sent][-1] == "upload_blob"  # the manifest, last
    status = cli(db, "status", "1")
    assert f"{ROWS} of {ROWS} done" in status.stdout and "uploaded" in status.stdout, status.stdout
    assert "x-ms-client-request-id" in status.stdout
    assert not (tmp_path / "exports" / ".spool" / "job-1").exists()  # the spool goes once done
    secret_free(db, sas)


async def test_snapshot_with_the_token_in_the_url_and_the_progress_bar_on_a_terminal(
    azurite: AzuriteServer, tmp_path: Path
) -> None:
    """A SAS in the URL's query works (with a note about ps), a terminal gets a rich progress bar, and the stored
    destination has no query."""
    db = await make_db(tmp_path / "m.db", rows=10)
    name = container(azurite)
    sas = azurite.sas(name)
    import pty

    leader, follower = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("XMPPMON_")} | {"COLUMNS": "120"}
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "export", "create", "--snapshot", "tag", "--database", str(db),
         "--dest", f"{azurite.container_url(name)}?{sas}"],
        stdout=subprocess.PIPE, stderr=follower, env=environ, timeout=120, check=False,
    )  # fmt: skip
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert proc.returncode == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert "━" in text and "export 1" in text and "rows" in text and "upload" in text
    assert "visible to other local users (ps)" in text
    job = get_job(db, 1)
    assert job.destination == azurite.container_url(name) and "?" not in job.destination
    rows = [
        orjson.loads(line)
        for line in gzip.decompress(azurite.download(name, "snapshot/tag/1/part-00000.jsonl.gz")).splitlines()
    ]
    assert rows == [{"app": "demo", "device_id": "d1", "name": "plan", "value": "gold", "ts": "2024-05-01T00:00:00.000Z",
                     "event_id": "t1", "received_at": "2024-05-01T00:00:00.000Z"}]  # fmt: skip
    secret_free(db, sas)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("expired", "refused the SAS token"),
        ("read-only", "does not allow writing blobs (403 AuthorizationPermissionMismatch)"),
        ("missing container", "(404 ContainerNotFound)"),
        ("bad signature", "refused the SAS token"),
    ],
)
async def test_refused_tokens_and_missing_containers_fail_the_job_in_one_line(
    azurite: AzuriteServer, tmp_path: Path, case: str, expected: str
) -> None:
    """Each refusal fails the job with one line naming the cause and both request ids, leaves no blob at all, and
    keeps the token out of the line, the job row and the database."""
    db = await make_db(tmp_path / "m.db")
    name = container(azurite)
    target, sas = name, azurite.sas(name)
    if case == "expired":
        sas = azurite.sas(name, expires_in=timedelta(hours=-1))
    elif case == "read-only":
        sas = azurite.sas(name, permission="rl")
    elif case == "missing container":
        target, sas = "nosuch-container", azurite.sas("nosuch-container")
    elif case == "bad signature":
        sas = sas.replace("sig=", "sig=AAAA")
    done = cli(db, *history(azurite.container_url(target)), sas=sas)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("xmppmon: export job 1 failed: ") and expected in lines[0], lines[0]
    assert "x-ms-request-id" in lines[0] and "x-ms-client-request-id" in lines[0]
    if case == "expired":
        assert "it expired at" in lines[0]
    job = get_job(db, 1)
    assert job.state == "failed" and job.error and expected in job.error and job.finished_at
    assert azurite.blobs(name) == {}
    assert [r["operation"] for r in requests_of(db, 1)] == ["stage_block"]  # failed at the write check, nothing spooled
    secret_free(db, sas)


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        ("https://acct.blob.core.windows.net/", "the path must be /CONTAINER"),
        ("https://acct.blob.core.windows.net/Bad_Name", "is not a container name"),
        ("https://acct.blob.core.windows.net/exports/extra/path", "the path must be /CONTAINER"),
        ("https://acct.blob.core.windows.net:port/exports", "malformed container URL"),
        ("ftp://acct.blob.core.windows.net/exports", "the scheme must be https"),
        ("https://acct.blob.core.windows.net/exports?sv=2024&sp=rw", "is not a SAS token: it has no sig="),
        ("http://acct.blob.core.windows.net/exports?sv=1&sig=c2VjcmV0", "refusing to send a SAS token over plain http"),
        ("https://acct.blob.core.windows.net/exports", "no SAS token for"),
    ],
)
async def test_bad_urls_are_refused_before_any_job_or_request(tmp_path: Path, dest: str, expected: str) -> None:
    """A malformed URL, a SAS over plain http to a non-loopback host, a query that is no SAS: one line, no job created,
    nothing sent, and the signature not echoed."""
    db = await make_db(tmp_path / "m.db", rows=1)
    done = cli(db, *history(dest))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert "c2VjcmV0" not in done.stderr and list_jobs(db) == []


async def test_network_drop_mid_upload_then_resume_restages_only_missing_blocks(
    azurite: AzuriteServer, tmp_path: Path
) -> None:
    """The network dies after a few blocks: the job fails in one line, the container shows nothing committed; `export
    resume` (token from the environment) stages only the blocks Azure does not have, and the download is identical."""
    db = await make_db(tmp_path / "m.db", rows=8000)
    name = container(azurite)
    sas = azurite.sas(name)
    proxy = CuttingProxy(azurite.port, budget=120_000)
    try:
        dest = f"http://127.0.0.1:{proxy.port}/devstoreaccount1/{name}"
        failed = cli(db, *history(dest), sas=sas, XMPPMON_AZURE__ATTEMPTS="2")
        assert failed.returncode == 1
        last = failed.stderr.strip().splitlines()[-1]
        assert last.startswith("xmppmon: export job 1 failed: network error during stage_block"), last
        assert "resume" not in last or "export resume" in last
        assert azurite.blobs(name) == {}  # uncommitted blocks are invisible: nothing looks complete
        job = get_job(db, 1)
        assert job.state == "failed" and "network error" in (job.error or "")
        first = requests_of(db, 1)
        staged = {r["block"] for r in first if r["operation"] == "stage_block" and r["http_status"] == 201} - {999_999}
        assert staged and max(staged) < 30, staged
        proxy.heal()
        resumed = cli(db, "resume", "1", sas=sas)
        assert resumed.returncode == 0, resumed.stderr
        again = [
            r for r in requests_of(db, 1)[len(first) :] if r["operation"] == "stage_block" and r["block"] != 999_999
        ]
        restaged = {r["block"] for r in again if r["blob"].endswith(".jsonl.gz")}
        assert restaged and not restaged & staged, (staged, restaged)
        jsonl = azurite.download(name, "history/event/1/part-00000.jsonl.gz")
        assert [orjson.loads(line) for line in gzip.decompress(jsonl).splitlines()] == db_rows(db)
        assert "history/event/1/manifest.json" in azurite.blobs(name)
        assert get_job(db, 1).state == "succeeded"
        secret_free(db, sas)
    finally:
        proxy.stop()


async def test_background_run_keeps_the_token_off_command_lines(azurite: AzuriteServer, tmp_path: Path) -> None:
    """--background hands the token to the child by its environment: its command line (what ps shows) has none; status
    polls rows and bytes while it waits for the network; healed, it finishes."""
    db = await make_db(tmp_path / "m.db")
    name = container(azurite)
    sas = azurite.sas(name)
    proxy = CuttingProxy(azurite.port, budget=0)  # every connection reset until healed
    try:
        dest = f"http://127.0.0.1:{proxy.port}/devstoreaccount1/{name}?{sas}"
        started = cli(db, *history(dest), "--background", XMPPMON_AZURE__ATTEMPTS="20",
                      XMPPMON_AZURE__BACKOFF_MAX="0.5")  # fmt: skip
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 30
        while not (job := get_job(db, 1)).pid or job.state != "running":
            assert time.monotonic() < deadline and job.state != "failed", job
            time.sleep(0.05)
        cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "export run 1" in cmdline and "sig=" not in cmdline and sas not in cmdline
        status = cli(db, "status", "1")
        assert "state:        running" in status.stdout, status.stdout
        proxy.heal()
        while (job := get_job(db, 1)).state == "running":
            assert time.monotonic() < deadline + 60, job
            time.sleep(0.1)
        assert job.state == "succeeded", job.error
        assert f"{ROWS} of {ROWS} done" in cli(db, "status", "1").stdout
        log = (tmp_path / "exports" / ".logs" / "job-1.log").read_text()
        assert "retrying (x-ms-request-id None)" in log and "upload_blob history/event/1/manifest.json: 201" in log
        assert "sig=" not in log and sas not in log
        secret_free(db, sas)
    finally:
        proxy.stop()


async def test_token_from_a_credential_file(azurite: AzuriteServer, tmp_path: Path) -> None:
    """With systemd's LoadCredential= (a file azure__sas in $CREDENTIALS_DIRECTORY) the URL needs no query."""
    db = await make_db(tmp_path / "m.db", rows=5)
    name = container(azurite)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "azure__sas").write_text(azurite.sas(name) + "\n")
    done = cli(db, *history(azurite.container_url(name)), CREDENTIALS_DIRECTORY=str(credentials))
    assert done.returncode == 0, done.stderr
    assert "history/event/1/manifest.json" in azurite.blobs(name)
    secret_free(db, azurite.sas(name))
