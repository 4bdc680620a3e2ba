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

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = [
    "ProsodyError",
    "ProsodyServer",
    "prosody_available",
    "prosody_version",
]

PROSODY = "prosody"
PROSODYCTL = "prosodyctl"

# Prosody logs these and then keeps running without the listener or TLS, so
# waiting for readiness would only end at the timeout; fail fast instead.
_FATAL_LOG_MARKERS = (
    "Failed to open server port",
    "Error binding encrypted port",
    "Failed to activate service",
    "Error creating TLS context",
    "Error creating context",
    "Failed to load private key",
    "Error loading private key",
    "unable to load certificate",
)

_STREAM_NS = "http://etherx.jabber.org/streams"


class ProsodyError(Exception):
    """Prosody could not be configured, started, stopped or administered."""


def prosody_available() -> bool:
    """Return True if both ``prosody`` and ``prosodyctl`` are on PATH."""
    return shutil.which(PROSODY) is not None and shutil.which(PROSODYCTL) is not None


def prosody_version() -> str:
    """Return the installed Prosody package version (e.g. ``0.12.3-1+deb12u1``).

    ``prosody --version`` would actually start a server, so ask dpkg instead.
    """
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "prosody"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProsodyError(f"cannot determine the Prosody version: {exc}") from exc
    version = result.stdout.strip()
    if not version:
        raise ProsodyError("dpkg-query reported no version for the prosody package")
    return version


def _free_loopback_port() -> int:
    """Ask the kernel for a currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _lua_str(value: str | Path) -> str:
    """Quote a Python string as a Lua string literal."""
    text = str(value)
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\0", "\\0")
    )
    return f'"{escaped}"'


def _tail(path: Path, lines: int = 20) -> str:
    """Return the last *lines* lines of a text file, or a placeholder."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip()
    except FileNotFoundError:
        return "<no output>"


@dataclass
class ProsodyServer:
    """A private Prosody instance rooted at :attr:`workdir`.

    Ports are picked on the first :meth:`start` and reused by every later
    start, so clients configured once keep working across restarts.
    """

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

    @property
    def running(self) -> bool:
        """True while the Prosody process we started has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def frozen(self) -> bool:
        """True between :meth:`freeze` and :meth:`thaw` (or the next stop)."""
        return self._frozen

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
            self.c2s_port = _free_loopback_port()
        while not self.component_port or self.component_port == self.c2s_port:
            self.component_port = _free_loopback_port()
        if not (self.ca_file.exists() and self.server_cert.exists() and self.server_key.exists()):
            self._write_certificates()
        self.config_path.write_text(self._render_config(), encoding="utf-8")
        # A stale pidfile from a killed run is harmless (mod_posix locks it),
        # but removing it keeps the directory honest about what is running.
        self.pidfile.unlink(missing_ok=True)
        self.admin_socket.unlink(missing_ok=True)

        # Truncate per start so error tails only show this attempt.
        self.log_path.write_text("", encoding="utf-8")
        try:
            with self.console_path.open("wb") as console:
                self._process = subprocess.Popen(
                    [PROSODY, "-F", "--config", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=self._env(),
                    # Own session: Ctrl-C in a terminal running the demo or
                    # pytest must not reach Prosody behind our back.
                    start_new_session=True,
                )
        except OSError as exc:
            raise ProsodyError(f"cannot execute {PROSODY!r}: {exc}") from exc
        self.pid = self._process.pid
        self._frozen = False
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate Prosody gracefully, escalating to SIGKILL; idempotent."""
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
        """SIGKILL Prosody to simulate a crash (no clean stream shutdown)."""
        proc = self._process
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait()
        self._reap()

    def freeze(self) -> None:
        """SIGSTOP Prosody: sockets stay open but nothing is answered."""
        self._require_running()
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen Prosody."""
        self._require_running()
        self._signal(signal.SIGCONT)
        self._frozen = False

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

    def __enter__(self) -> ProsodyServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

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

    def _signal(self, sig: signal.Signals) -> None:
        # Only ever the PID we spawned, and only while it is still our child
        # (poll() reaps it, so the PID cannot have been recycled yet).
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
            raise ProsodyError("Prosody is not running")

    def _failure(self, reason: str) -> ProsodyError:
        return ProsodyError(
            f"{reason}\n--- {self.log_path} (tail) ---\n{_tail(self.log_path)}"
            f"\n--- {self.console_path} (tail) ---\n{_tail(self.console_path)}"
        )

    def _fatal_log_line(self) -> str | None:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            if any(marker in line for marker in _FATAL_LOG_MARKERS):
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
                self._probe_c2s()
                self._probe_component()
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

    def _exchange(self, port: int, header: str, expect: bytes) -> None:
        """Send a stream header and read until *expect* arrives.

        A listening socket alone proves little (Prosody binds before its
        hosts are configured), so only a real XMPP answer counts as ready.
        """
        # Short timeout: a ready Prosody answers within milliseconds, and a
        # foreign listener on our port must not stall the fatal-log check.
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(header.encode())
            received = b""
            while expect not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError(f"port {port} closed the stream: {received[-300:]!r}")
                received += chunk
            # Close politely so Prosody does not log a stream error.
            with contextlib.suppress(OSError):
                sock.sendall(b"</stream:stream>")

    def _probe_c2s(self) -> None:
        self._exchange(
            self.c2s_port,
            f"<?xml version='1.0'?><stream:stream to='{self.domain}' xmlns='jabber:client' "
            f"xmlns:stream='{_STREAM_NS}' version='1.0'>",
            b"<stream:features",
        )

    def _probe_component(self) -> None:
        self._exchange(
            self.component_port,
            f"<?xml version='1.0'?><stream:stream to='{self.component}' "
            f"xmlns='jabber:component:accept' xmlns:stream='{_STREAM_NS}'>",
            b"<stream:stream",
        )

    def _openssl(self, *args: str) -> None:
        try:
            subprocess.run(
                ["openssl", *args],
                cwd=self.certs_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
        except subprocess.CalledProcessError as exc:
            raise ProsodyError(f"openssl {args[0]} failed: {exc.stderr.strip()}") from exc
        except (OSError, subprocess.SubprocessError) as exc:
            raise ProsodyError(f"openssl {args[0]} failed: {exc}") from exc

    def _write_certificates(self) -> None:
        """Create a throwaway CA and a server certificate signed by it.

        The extensions are those strict verifiers (Python 3.13's
        VERIFY_X509_STRICT) insist on, so clients can verify chain and host
        name with nothing but :attr:`ca_file`.
        """
        self.certs_dir.mkdir(parents=True, exist_ok=True)
        ca_key = self.certs_dir / "ca.key"
        csr = self.certs_dir / f"{self.domain}.csr"
        ext = self.certs_dir / f"{self.domain}.ext"
        # EC keys are generated instantly, unlike RSA, which matters per test.
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        self._openssl(
            "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(self.ca_file),
            "-days", "3650", "-subj", "/CN=xmppmon test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
        )  # fmt: skip
        self._openssl(
            "req", "-new", *ec, "-keyout", str(self.server_key), "-out", str(csr),
            "-subj", f"/CN={self.domain}",
        )  # fmt: skip
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
            f"subjectAltName=DNS:{self.domain},DNS:*.{self.domain},DNS:{self.component}\n",
            encoding="utf-8",
        )
        self._openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca_file), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(self.server_cert), "-days", "3650",
            "-extfile", str(ext),
        )  # fmt: skip
        # Prosody runs as the invoking user (root under run_as_root), which
        # owns these files; 0600 keeps the keys private all the same.
        ca_key.chmod(0o600)
        self.server_key.chmod(0o600)

    def _render_config(self) -> str:
        q = _lua_str
        # Unix socket paths are limited to ~107 bytes; Prosody would fail to
        # bind a longer one, so deep workdirs simply go without the shell.
        admin_socket_line = f"admin_socket = {q(self.admin_socket)}\n" if len(str(self.admin_socket)) < 100 else ""
        admin_modules = '"admin_shell"; ' if admin_socket_line else ""
        # Unlocked rooms: tests create a room by joining it, without the owner's configuration form.
        muc_block = f'\nComponent {q(self.muc)} "muc"\n    muc_room_locking = false\n' if self.muc else ""
        return f"""\
-- Generated by agent.prosody; rewritten on every start.
run_as_root = true  -- tests and the demo may run as root (containers)
daemonize = false
pidfile = {q(self.pidfile)}
data_path = {q(self.data_dir)}
certificates = {q(self.certs_dir)}
{admin_socket_line}
log = {{
    {{ levels = {{ min = {q(self.log_level)} }}, to = "file", filename = {q(self.log_path)} }};
}}

interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s_port} }}
c2s_direct_tls_ports = {{ }}
component_ports = {{ {self.component_port} }}
component_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}

-- "limits" deliberately absent: Debian's default throttles c2s to 10 kB/s.
modules_enabled = {{
    "roster"; "saslauth"; "tls"; "disco"; "ping"; "smacks"; "mam"; "offline";
    {admin_modules}
}}
modules_disabled = {{ "s2s"; "s2s_auth_certs" }}

c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"

archive_expires_after = "1w"
-- Archive messages even for clients that never set MAM preferences.
default_archive_policy = true
storage_archive_item_limit = {int(self.archive_item_limit)}

smacks_hibernation_time = {int(self.hibernation_time)}
smacks_max_queue_size = {int(self.max_queue_size)}

{self.extra_config}

VirtualHost {q(self.domain)}
    ssl = {{ certificate = {q(self.server_cert)}; key = {q(self.server_key)} }}

Component {q(self.component)}
    component_secret = {q(self.component_secret)}
{muc_block}"""
