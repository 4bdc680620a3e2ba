"""Processes and resources the soak starts, and the faults it does to them.

Every process is started here as a child, remembered by its ``Popen``, signalled only by that PID,
and stopped by :meth:`Child.close` in the soak's ``finally``. Each start of a child writes its own
log file (``<name>.<n>.log``), so "what did this process say since it started" is one file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson


@dataclass
class Exit:
    t: float
    pid: int
    rc: int | None
    expected: bool
    log: str


@dataclass
class Child:
    """One long-lived command (the agent, the sidecar, an emulator segment), restartable."""

    name: str
    argv: list[str]
    env: dict[str, str]
    logdir: Path
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    started_at: float = 0.0
    exits: list[Exit] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.alive():
            raise RuntimeError(f"{self.name} is already running")
        self.starts += 1
        self.log_path = self.logdir / f"{self.name}.{self.starts}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.cwd, start_new_session=True,
            )  # fmt: skip
        self.started_at = time.time()

    def _reaped(self, expected: bool) -> None:
        assert self.proc is not None
        self.exits.append(Exit(time.time(), self.proc.pid, self.proc.returncode, expected, str(self.log_path)))
        self.proc = None

    def check(self) -> Exit | None:
        """If the process ended without being told to, record it (and return the record)."""
        if self.proc is not None and self.proc.poll() is not None:
            self._reaped(expected=False)
            return self.exits[-1]
        return None

    def kill9(self) -> bool:
        """SIGKILL; False if it was not running."""
        if not self.alive():
            self.check()
            return False
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._reaped(expected=True)
        return True

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL after ``timeout``. Returns the exit code (None if not running)."""
        if not self.alive():
            self.check()
            return None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            rc = None
        self._reaped(expected=True)
        return rc

    def close(self) -> None:
        """For the ``finally``: SIGKILL if still running (by our PID only)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def rss_kb(self) -> int | None:
        """VmRSS of the running process, from /proc."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None

    def log_lines(self) -> list[dict[str, object]]:
        """This start's log as JSON objects (XMPPMON_LOG__JSON); other lines as {"message": text}."""
        if self.log_path is None or not self.log_path.exists():
            return []
        return parse_log(self.log_path)


def parse_log(path: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        out.append(obj if isinstance(obj, dict) else {"message": line.decode(errors="replace")})
    return out


def log_has(path: Path | None, text: str) -> bool:
    if path is None or not path.exists():
        return False
    return text.encode() in path.read_bytes()


# -- the database's filesystem ----------------------------------------------------------------


def mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs at {path} (the soak needs root): {result.stderr.strip()}")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


def fill(directory: Path) -> tuple[Path, int]:
    """Write a file until the filesystem is full; return it and its size (delete it to free)."""
    filler = directory / "filler"
    written = 0
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 20, 4096, 512):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    n = out.write(chunk)
                    if not n:
                        break
                    written += n
    return filler, written


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def hold_write_lock(db: Path, seconds: float) -> str:
    """An outside writer: BEGIN IMMEDIATE held for ``seconds`` (blocking; run it in a thread)."""
    conn = sqlite3.connect(db, timeout=15, isolation_level=None)
    try:
        started = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        waited = time.monotonic() - started
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        return f"lock taken after {waited:.2f} s, held {seconds:.1f} s"
    finally:
        conn.close()


def cut_tcp(port: int) -> int:
    """``ss -K`` every TCP connection to ``port`` on 127.0.0.1 (the agent's c2s); how many were cut."""
    result = subprocess.run(
        ["ss", "-K", "-t", "-n", "dst", "127.0.0.1", "dport", "=", f":{port}"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.strip() and not line.startswith(("State", "Recv-Q"))]
    return len(lines)
