"""Two ``xmppmon export run`` processes started for the same job: only one runs it (issue 10, defect 10)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agent.export import create_job, get_job, parse_time

from .test_jobs import make_db, read_jsonl

XMPPMON = [sys.executable, "-m", "agent"]


def writes_to(pid: int, db: Path) -> bool:
    """Whether process ``pid`` has ``db`` open for writing (its claim's connection), from /proc."""
    target = str(db.resolve())
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != target:
                continue
            flags = next(line for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                         if line.startswith("flags:"))  # fmt: skip
        except (FileNotFoundError, StopIteration):
            continue
        if int(flags.split()[1], 8) & os.O_ACCMODE == os.O_RDWR:
            return True
    return False


async def test_two_concurrent_runs_of_one_job_only_one_runs_it(tmp_path: Path) -> None:
    """Both processes read the job as queued and reach the claim while the database is write-locked; once the lock
    goes, exactly one claims and runs the job, the other exits 1 with one line, and the job row names the winner."""
    db = await make_db(tmp_path / "m.db")
    dest = tmp_path / "out"
    job_id = create_job(db, "history", "crash", dest, from_ts=parse_time("2024-05-01"), to_ts=parse_time("2024-05-02"))
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another writer holds the lock: both claims must wait for it
    command = [*XMPPMON, "export", "run", str(job_id), "--database", str(db)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while not all(writes_to(p.pid, db) for p in procs):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the two processes did not both reach the claim"
            time.sleep(0.02)
        assert get_job(db, job_id).state == "queued"
        lock.rollback()
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        lock.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], results
    winner, loser = (procs[0], procs[1]) if procs[0].returncode == 0 else (procs[1], procs[0])
    err = results[procs.index(loser)][1].strip().splitlines()
    assert err == [f"xmppmon: export job {job_id} is running, not queued"] or err == [
        f"xmppmon: export job {job_id} is succeeded, not queued"]  # fmt: skip
    job = get_job(db, job_id)
    assert (job.state, job.pid, job.rows, job.error) == ("succeeded", winner.pid, 10, None)
    assert sorted(os.listdir(dest)) == sorted([f"{job.stem}.jsonl.gz", f"{job.stem}.manifest.json"])
    assert len(read_jsonl(dest / f"{job.stem}.jsonl.gz")) == 10
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*), min(state) FROM export_jobs").fetchone() == (1, "succeeded")
    conn.close()
