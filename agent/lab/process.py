"""One private server process of the lab: spawn, stop (TERM then KILL), crash (KILL), freeze and thaw.

Only ever signals the PID it spawned, and only while that process is still its child: ``poll()``
reaps it, so the PID cannot have been recycled yet.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Self

from agent.exceptions import LabError


class StartStop:
    """A lab server as a context manager: started on entry, stopped on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess(StartStop):
    """Mixin for a server dataclass; ``label`` names it in errors, ``error`` is the error class raised."""

    label = "server"
    error: type[LabError] = LabError
    _process: subprocess.Popen[bytes] | None
    _frozen: bool
    pid: int | None

    @property
    def running(self) -> bool:
        """True while the process we started has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def frozen(self) -> bool:
        """True between :meth:`freeze` and :meth:`thaw` (or the next stop)."""
        return self._frozen

    def _spawn(self, argv: list[str], console: Path, cwd: Path, env: dict[str, str]) -> None:
        try:
            with console.open("wb") as out:
                self._process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                    # Own session: Ctrl-C in a terminal running the demo or pytest must not reach
                    # the server behind our back.
                    start_new_session=True,
                )  # fmt: skip
        except OSError as exc:
            raise self.error(f"cannot execute {argv[0]!r}: {exc}") from exc
        self.pid = self._process.pid
        self._frozen = False

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server gracefully, escalating to SIGKILL; idempotent."""
        proc = self._process
        if proc is None:
            return
        if proc.poll() is None:
            # A stopped process would never act on SIGTERM.
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server to simulate a crash (no clean stream shutdown)."""
        proc = self._process
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait()
        self._reap()

    def freeze(self) -> None:
        """SIGSTOP the server: sockets stay open but nothing is answered."""
        self._require_running()
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        self._require_running()
        self._signal(signal.SIGCONT)
        self._frozen = False

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait()
        self._process = None
        self.pid = None
        self._frozen = False

    def _require_running(self) -> None:
        if not self.running:
            raise self.error(f"{self.label} is not running")
