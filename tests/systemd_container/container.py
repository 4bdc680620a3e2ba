"""A Debian 12 container booted with systemd-nspawn, its PID 1 a real systemd 252, for the unit tests.

The root file system is built once with debootstrap into a cache outside the repository
(:data:`CACHE`), in a temporary directory renamed into place when complete, so an interrupted build
is never reused. Each :class:`Container` boots it with ``--volatile=overlay`` (every change lives in
a tmpfs and is gone at stop), in cgroups of its own so two containers never share one, and shares
the host's network, so servers on the host's 127.0.0.1 are reachable from inside.

Facts this relies on (measured on the CI machine, see issue 12): the host has no systemd, hence
``--register=no --keep-unit``; PID 1 ignores SIGTERM for its first ~50 ms, hence SIGTERM repeated;
``nsenter -a`` plus ``env -i`` runs a command inside without leaking the host's environment.

No pytest here: the fixtures in conftest.py wrap it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("XMPPMON_TEST_CACHE", "/var/cache/xmppmon-test"))
SUITE = "bookworm"
# make: the container installs xmppmon the way the README tells an operator, with `make install`.
# procps: /bin/kill for the units' ExecReload= (a standard Debian install has it; minbase does not).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "make", "procps")
TOOLS = ("debootstrap", "systemd-nspawn", "nsenter")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
_STAMP = ".xmppmon-rootfs"


class ContainerError(Exception):
    """The root file system could not be built, or the container could not boot, run or stop."""


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


# --- the root file system -------------------------------------------------------------------


def _deb822_mirrors(text: str) -> Iterator[str]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split():
            yield from fields.get("uris", "").split()


def _one_line_mirrors(text: str) -> Iterator[str]:
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
            yield words[1]


def host_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The host's Debian mirror for ``bookworm``, from its apt sources (never a hard-coded host)."""
    candidates: list[str] = []
    for path in sorted(etc.glob("sources.list.d/*.sources")):
        candidates += _deb822_mirrors(path.read_text())
    for path in [etc / "sources.list", *sorted(etc.glob("sources.list.d/*.list"))]:
        if path.is_file():
            candidates += _one_line_mirrors(path.read_text())
    if not candidates:
        raise ContainerError(f"no 'deb … {SUITE}' source in {etc}/sources.list(.d): cannot pick a mirror")
    return candidates[0]


def _mount_points_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Delete a (possibly half-built) root file system without crossing into anything mounted in it."""
    for point in _mount_points_under(path):  # an interrupted debootstrap leaves /proc and /sys mounted
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True, capture_output=True)


def ensure_rootfs(cache: Path = CACHE, log: Path | None = None) -> Path:
    """The cached root file system, built first if it is missing or was built with other packages."""
    target = cache / f"rootfs-{SUITE}"
    wanted = " ".join(PACKAGES)
    stamp = target / _STAMP
    if stamp.is_file() and stamp.read_text().strip() == wanted:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it right now
        if stamp.is_file() and stamp.read_text().strip() == wanted:
            return target
        for stale in cache.glob(f"rootfs-{SUITE}.*"):  # left by an interrupted build or replacement
            _remove_tree(stale)
        building = cache / f"rootfs-{SUITE}.building-{os.getpid()}"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(building)]
        command.append(host_mirror())
        with open(log or cache / "debootstrap.log", "w") as out:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=900)
        if result.returncode != 0:
            _remove_tree(building)
            raise ContainerError(f"debootstrap failed with status {result.returncode}; see {out.name}")
        (building / _STAMP).write_text(wanted + "\n")
        if target.exists():
            old = cache / f"rootfs-{SUITE}.old-{os.getpid()}"
            target.rename(old)
            _remove_tree(old)
        building.rename(target)
    return target


# --- the booted container -------------------------------------------------------------------


@dataclass
class Result:
    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        if self.returncode != 0:
            raise ContainerError(
                f"{' '.join(self.args)!r} exited with {self.returncode}:\n{self.stdout[-3000:]}{self.stderr[-3000:]}"
            )
        return self


@dataclass
class Container:
    """One booted container. ``binds`` are ``(host path, container path, read_only)``."""

    rootfs: Path
    workdir: Path
    binds: list[tuple[Path, str, bool]] = field(default_factory=list)
    name: str = field(default_factory=lambda: f"xmppmon-test-{uuid.uuid4().hex[:12]}")
    pid1: int = 0
    #: What stop() had to force (SIGKILL): empty after a clean shutdown.
    forced: list[str] = field(default_factory=list)
    _nspawn: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def cgroups(self) -> list[Path]:
        return [root / self.name for root in CGROUP_ROOTS if root.is_dir()]

    def boot(self, timeout: float = 60.0) -> None:
        """Start systemd-nspawn in cgroups of its own and wait until the system is up."""
        if not self.cgroups:
            raise ContainerError(
                f"none of {', '.join(map(str, CGROUP_ROOTS))} exists: cannot give the container a cgroup"
            )
        for group in self.cgroups:
            group.mkdir()
        command = [
            "systemd-nspawn", "-D", str(self.rootfs), "-b", "--register=no", "--keep-unit",
            "--volatile=overlay", "--console=read-only", f"--machine={self.name}",
        ]  # fmt: skip
        for host, inside, read_only in self.binds:
            command.append(f"--bind{'-ro' if read_only else ''}={host}:{inside}")
        # The shell moves itself into the new cgroups, then becomes systemd-nspawn: --keep-unit makes
        # that cgroup the container's, so nothing is shared with another container or with pytest.
        enter = " && ".join(f'echo $$ > "{group}/cgroup.procs"' for group in self.cgroups)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.console_log.open("wb") as console:
            self._nspawn = subprocess.Popen(
                ["sh", "-c", f'{enter} && exec "$@"', "sh", *command],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on pytest must not reach the container behind our back
            )  # fmt: skip
        try:
            self._wait_running(timeout)
        except BaseException:
            self.stop()
            raise

    def _find_pid1(self) -> int:
        for group in self.cgroups[:1]:
            for procs in group.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    for pid in procs.read_text().split():
                        status = Path(f"/proc/{pid}/status").read_text()
                        nspid = re.search(r"^NSpid:\s*(.*)$", status, re.M)
                        if nspid and nspid.group(1).split()[-1] == "1" and len(nspid.group(1).split()) > 1:
                            return int(pid)
        return 0

    def _wait_running(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = "not started"
        while time.monotonic() < deadline:
            if self._nspawn is None or self._nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited during boot:\n{self.console_tail()}")
            if not self.pid1:
                self.pid1 = self._find_pid1()
            if self.pid1:
                state = self.run(["systemctl", "is-system-running"], timeout=10).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.1)
        raise ContainerError(
            f"the container did not finish booting in {timeout} s (state {state!r}):\n{self.console_tail()}"
        )

    def console_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no console output>"

    def run(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
        input: str | None = None,
        check: bool = False,
    ) -> Result:
        """Run one command inside, with a clean environment (only PATH and ``env``)."""
        if not self.pid1:
            raise ContainerError("the container is not running")
        variables = [f"{k}={v}" for k, v in {"PATH": PATH, "LANG": "C.UTF-8", **(env or {})}.items()]
        command = ["nsenter", "-t", str(self.pid1), "-a", "env", "-i", *variables, *args]
        try:
            done = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ContainerError(f"{' '.join(args)!r} did not finish in {timeout} s") from exc
        result = Result(list(args), done.returncode, done.stdout, done.stderr)
        return result.check() if check else result

    def sh(self, script: str, timeout: float = 60.0, check: bool = True, env: dict[str, str] | None = None) -> str:
        """Run a shell script inside; its output (stdout then stderr)."""
        result = self.run(["sh", "-c", script], env=env, timeout=timeout, check=check)
        return result.stdout + result.stderr

    def processes(self) -> list[int]:
        """Every process left in the container's cgroups."""
        pids: set[int] = set()
        for group in self.cgroups:
            for procs in group.rglob("cgroup.procs") if group.is_dir() else []:
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
        return sorted(pids)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM systemd-nspawn (repeated: PID 1 ignores it while starting) until it exits; idempotent."""
        proc = self._nspawn
        if proc is not None:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.5)
            if proc.poll() is None:
                self.forced.append(f"systemd-nspawn {proc.pid} ignored SIGTERM for {timeout} s")
                proc.kill()
                proc.wait()
        # A killed nspawn can leave the container's processes behind: they are all in our cgroups.
        for pid in self.processes():
            self.forced.append(f"process {pid} left in the container's cgroup")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        for group in self.cgroups:
            if group.is_dir():
                for sub in sorted(
                    (p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
                ):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
                with contextlib.suppress(OSError):
                    group.rmdir()
        self._nspawn = None
        self.pid1 = 0

    def leftovers(self) -> list[str]:
        """What this container left on the host: processes, cgroups. Empty when stopped cleanly."""
        left = [f"process {pid}" for pid in self.processes()]
        left += [f"cgroup {group}" for group in self.cgroups if group.exists()]
        return left
