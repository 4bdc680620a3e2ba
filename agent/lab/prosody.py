"""Run a real, private Prosody server on 127.0.0.1 for tests and the local demo.

Everything the server needs (config, TLS material, data, pidfile, log, admin
socket) lives under one work directory, so several instances can run side by
side and nothing touches Debian's ``/etc/prosody`` or the system service.

Typical use::

    with ProsodyServer(tmp_path) as server:
        jid = server.register("alice", "secret")
        # connect a client to 127.0.0.1:server.c2s_port, trusting server.ca_file

This module is library code shared by the pytest fixtures and ``make demo``;
it must not import pytest.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.lab.net import c2s_header, component_header, exchange, free_loopback_port, tail
from agent.lab.process import ServerProcess
from agent.lab.prosody_config import (
    FATAL_LOG_MARKERS,
    PROSODY,
    PROSODYCTL,
    ProsodyError,
    prosody_available,
    prosody_version,
    render_config,
)
from agent.lab.tls import write_certificates

__all__ = [
    "ProsodyError",
    "ProsodyServer",
    "prosody_available",
    "prosody_version",
]


@dataclass
class ProsodyServer(ServerProcess):
    """A private Prosody instance rooted at :attr:`workdir`.

    Ports are picked on the first :meth:`start` and reused by every later
    start, so clients configured once keep working across restarts.
    """

    label = "Prosody"
    error = ProsodyError

    workdir: Path
    domain: str = "localhost"
    component: str = "monitor.localhost"
    component_secret: str = "component-secret"
    hibernation_time: int = 600
    max_queue_size: int = 500
    #: Past this many archived messages per user, mod_storage_internal truncates and rewrites the
    #: whole archive on every message (default 10,000), which stalls long streams.
    archive_item_limit: int = 10_000_000
    extra_config: str = ""
    log_level: str = "info"
    #: A MUC component's domain (e.g. ``conference.localhost``); None: no MUC service.
    muc: str | None = None

    # Filled in by start(); zero/None until then.
    c2s_port: int = field(default=0, init=False)
    component_port: int = field(default=0, init=False)
    ca_file: Path = field(init=False)
    pid: int | None = field(default=None, init=False)
    log_path: Path = field(init=False)

    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _frozen: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.ca_file = self.certs_dir / "ca.crt"
        self.log_path = self.workdir / "prosody.log"

    # -- paths -------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """The Lua config file passed to prosody and prosodyctl."""
        return self.workdir / "prosody.cfg.lua"

    @property
    def certs_dir(self) -> Path:
        """Directory holding the throwaway CA and the server certificate."""
        return self.workdir / "certs"

    @property
    def data_dir(self) -> Path:
        """Prosody's ``data_path`` (accounts, rosters, archives)."""
        return self.workdir / "data"

    @property
    def pidfile(self) -> Path:
        """Pidfile written by mod_posix."""
        return self.workdir / "prosody.pid"

    @property
    def admin_socket(self) -> Path:
        """Unix socket of mod_admin_socket (usable with ``prosodyctl shell``)."""
        return self.workdir / "prosody.sock"

    @property
    def console_path(self) -> Path:
        """Prosody's stdout/stderr; config parse errors only show up here."""
        return self.workdir / "prosody.console.log"

    @property
    def server_cert(self) -> Path:
        """Server certificate covering the domain, ``*.domain`` and the component."""
        return self.certs_dir / f"{self.domain}.crt"

    @property
    def server_key(self) -> Path:
        """Private key of :attr:`server_cert`."""
        return self.certs_dir / f"{self.domain}.key"

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Launch Prosody and block until it serves c2s and component streams.

        Raises :class:`ProsodyError` (with the log tail) if the process exits
        or does not become ready within *timeout* seconds.
        """
        if self.running:
            raise ProsodyError(f"Prosody is already running (pid {self.pid})")
        self._reap()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        # Ports preset by the caller (or by an earlier start) are kept.
        if not self.c2s_port:
            self.c2s_port = free_loopback_port()
        while not self.component_port or self.component_port == self.c2s_port:
            self.component_port = free_loopback_port()
        if not (self.ca_file.exists() and self.server_cert.exists() and self.server_key.exists()):
            names = [self.domain, f"*.{self.domain}", self.component]
            self.ca_file, _, _ = write_certificates(self.certs_dir, self.domain, names)
        self.config_path.write_text(render_config(self), encoding="utf-8")
        # A stale pidfile from a killed run is harmless (mod_posix locks it),
        # but removing it keeps the directory honest about what is running.
        self.pidfile.unlink(missing_ok=True)
        self.admin_socket.unlink(missing_ok=True)

        # Truncate per start so error tails only show this attempt.
        self.log_path.write_text("", encoding="utf-8")
        self._spawn([PROSODY, "-F", "--config", str(self.config_path)], self.console_path, self.workdir, self._env())
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def restart(self, timeout: float = 15.0) -> None:
        """Stop (if still running) and start again on the same ports and data."""
        self.stop()
        self.start(timeout)

    def register(self, user: str, password: str) -> str:
        """Create *user* on :attr:`domain` via prosodyctl and return the bare JID.

        prosodyctl writes straight into the internal storage, so this works
        whether or not the server is running (but needs a prior start() for
        the config). The password shows up in ``ps``: test accounts only.
        """
        if not self.config_path.exists():
            raise ProsodyError("the server has never been started; no config to register against")
        self._prosodyctl("register", user, self.domain, password)
        return f"{user}@{self.domain}"

    def shell(self, command: str, timeout: float = 20.0) -> str:
        """Run one ``prosodyctl shell`` command on the live server; return its output.

        Example: ``server.shell("c2s:show()")``. Goes through the admin socket,
        so the workdir path must be short enough for a unix socket.
        """
        self._require_running()
        return self._prosodyctl("shell", command, timeout=timeout)

    # -- internals ---------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # prosodyctl falls back to this when --config is missing; make sure a
        # caller's PROSODY_CONFIG can never point us at another server.
        env["PROSODY_CONFIG"] = str(self.config_path)
        return env

    def _prosodyctl(self, *args: str, timeout: float = 30.0) -> str:
        """Run prosodyctl against this instance's config; return its output."""
        argv = [PROSODYCTL, "--config", str(self.config_path), *args]
        # Never echo the arguments: register's include a password.
        what = f"prosodyctl {args[0]}"
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd=self.workdir,
                env=self._env(),
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ProsodyError(f"{what} failed: {exc}") from exc
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            raise ProsodyError(f"{what} exited with status {result.returncode}: {output or '<no output>'}")
        return output

    def _failure(self, reason: str) -> ProsodyError:
        return ProsodyError(
            f"{reason}\n--- {self.log_path} (tail) ---\n{tail(self.log_path)}"
            f"\n--- {self.console_path} (tail) ---\n{tail(self.console_path)}"
        )

    def _fatal_log_line(self) -> str | None:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            if any(marker in line for marker in FATAL_LOG_MARKERS):
                return line.strip()
        return None

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        proc = self._process
        assert proc is not None
        last_error = "no connection attempt yet"
        while True:
            code = proc.poll()
            if code is not None:
                raise self._failure(f"Prosody exited with status {code} during startup")
            fatal = self._fatal_log_line()
            if fatal is not None:
                raise self._failure(f"Prosody reported a startup error: {fatal}")
            try:
                exchange(self.c2s_port, c2s_header(self.domain), b"<stream:features")
                exchange(self.component_port, component_header(self.component), b"<stream:stream")
                return
            except OSError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise self._failure(
                    f"Prosody not ready on 127.0.0.1:{self.c2s_port} (c2s) / "
                    f"{self.component_port} (component) after {timeout:.1f}s; "
                    f"last error: {last_error}"
                )
            time.sleep(0.1)
