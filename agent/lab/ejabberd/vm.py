"""The Erlang VM's processes as /proc shows them: its helpers, and whether its threads have stopped.

The VM (``erl`` execs ``erlexec``, which execs ``beam.smp``: one PID) starts port helpers
(``erl_child_setup``, ``inet_gethost``) that call ``setsid``: signals to the VM never reach them.
They exit when the VM's pipes close; :func:`end_processes` makes sure they did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from agent.lab.ejabberd.installed import EjabberdError

#: A live process: (PID, start time in clock ticks). The start time pins its identity.
Process = tuple[int, int]


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent PID, start time in clock ticks) of a live process, from /proc; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> list[Process]:
    """Every live descendant of *root* (found while it lives: orphans are re-parented)."""
    children: dict[int, list[Process]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = proc_stat(int(entry.name))
            if info is not None:
                children.setdefault(info[0], []).append((int(entry.name), info[1]))
    found: list[Process] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def end_processes(processes: list[Process], grace: float = 0.2) -> None:
    """Wait up to *grace* seconds for these processes to exit; SIGKILL those still there.

    Once the VM is gone its helpers have nothing left to do, but ``erl_child_setup`` (and the
    ``inet_gethost`` it started) lingers 1-2 s before it notices: not worth waiting for on every stop.
    A process counts as the same only while its start time matches, so a recycled PID is never hit.
    """

    def alive() -> list[int]:
        return [pid for pid, started in processes if (proc_stat(pid) or (0, -1))[1] == started]

    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def thread_states(pid: int) -> list[str]:
    """The one-letter state of each thread of *pid* (``T``/``t``: stopped)."""
    states = []
    for task in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError, IndexError):
            states.append(task.read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()[0])
    return states


def wait_threads(pid: int, *, stopped: bool, running: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until all (``stopped``) or none (not ``stopped``) of the VM's threads are stopped.

    SIGSTOP is only queued: a thread busy in the kernel (an fsync of the archive) stops when it
    gets back, so a caller that wants "nothing is answered any more" has to wait for it.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = thread_states(pid)
        halted = [state in "Tt" for state in states]
        if not states or not running() or (all(halted) if stopped else not any(halted)):
            return
        time.sleep(0.005)
    raise EjabberdError(f"the VM's threads did not {'stop' if stopped else 'resume'} within {timeout:.0f} s")
