"""Helpers for the tests that run real ``xmppmon`` processes on real files: processes, tmpfs, JSON logs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

XMPPMON = [sys.executable, "-m", "agent"]


class Proc:
    """One ``xmppmon`` command as a child process, its output appended to a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*XMPPMON, *self.args], env=self.env, stdout=out, stderr=out)
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines (XMPPMON_LOG__JSON=true), each with ``at`` (epoch seconds) added."""
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = orjson.loads(line)
                    record["at"] = datetime.fromisoformat(record["ts"]).timestamp()
                    out.append(record)
        return out


@contextlib.contextmanager
def tmpfs(where: Path, megabytes: int) -> Iterator[Path]:
    """A file system of ``megabytes`` mounted at ``where`` for the block (the tests run as root)."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(where)], check=False)


class AgentProcess(Proc):
    """``xmppmon run`` as a child process, its log appended to one file across restarts."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(["run"], env, log)


def free_bytes(folder: Path) -> int:
    fs = os.statvfs(folder)
    return fs.f_bavail * fs.f_frsize


def fill(path: Path, leave: int = 0) -> int:
    """Append to ``path`` until the file system has at most ``leave`` bytes free (0: until it refuses)."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 64 << 10, 4096, 512, 1):
            while free_bytes(path.parent) - size >= leave or (leave == 0 and free_bytes(path.parent) > 0):
                try:
                    written += os.write(fd, b"\0" * size)
                except OSError:
                    break
            if leave:
                break
    finally:
        os.close(fd)
    return written
