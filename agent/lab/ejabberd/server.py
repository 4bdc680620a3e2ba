"""A real, private ejabberd (Debian's 23.01) on 127.0.0.1 for tests: the second server.

:class:`EjabberdServer` has the public interface of :class:`agent.lab.prosody.ProsodyServer`
(``start``/``stop``/``kill``/``freeze``/``thaw``/``restart``/``register``/``shell``, the ports,
``ca_file``, the component for the emulator), so a test can be parametrized over both servers.

Everything lives under one work directory: the config, the TLS material, the Mnesia spool, the
SQLite database (accounts, rosters, offline messages, the MAM archive), the logs, the pidfile and
the Erlang cookie. Nothing touches Debian's ``/etc/ejabberd``, ``/var/lib/ejabberd``, the system
service, its node name (``xmppmon_<hash of the workdir>@localhost`` here) or its ports.

Typical use::

    with EjabberdServer(tmp_path) as server:
        jid = server.register("alice", "secret")
        # connect a client to 127.0.0.1:server.c2s_port, trusting server.ca_file

Library code shared by the pytest fixtures; it must not import pytest.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.lab.ejabberd import config, node, storage, vm
from agent.lab.ejabberd.installed import ERL, FATAL_LOG_MARKERS, EjabberdError, ejabberd_libs
from agent.lab.ejabberd.paths import EjabberdPaths
from agent.lab.net import c2s_header, component_header, exchange, free_loopback_port, tail
from agent.lab.process import ServerProcess
from agent.lab.tls import write_certificates


@dataclass
class EjabberdServer(EjabberdPaths, ServerProcess):
    """A private ejabberd instance rooted at :attr:`workdir`.

    Ports (c2s, component, Erlang distribution) are picked on the first :meth:`start` and reused
    by every later start, so clients configured once keep working across restarts.

    The knobs mirror :class:`~agent.lab.prosody.ProsodyServer`'s, so tests pass the same keywords
    to either server; each maps to the ejabberd option that plays the same part (docs/servers.md):

    ``hibernation_time``
        ``mod_stream_mgmt: resume_timeout`` (seconds; ejabberd's default 300). When it runs out,
        ``resend_on_timeout: if_offline`` sends the unacknowledged queue to offline storage.
    ``max_queue_size``
        ``mod_stream_mgmt: max_ack_queue`` (default 5000). Unlike Prosody's
        ``smacks_max_queue_size`` it holds for a connected stream too: past it ejabberd ends the
        session (no resumption), and the queue is only in the archive.
    ``offline_limit``
        ``shaper_rules: max_user_offline_messages`` (Debian ships 100; ``None``: unlimited).
        Prosody has no such limit. Past it, new offline messages are bounced.
    ``extra_config``
        a mapping deep-merged into the generated config (mappings merge, other values replace),
        e.g. ``{"modules": {"mod_mam": {"assume_mam_usage": True}}}``.
    """

    label = "ejabberd"
    error = EjabberdError

    workdir: Path
    domain: str = "localhost"
    component: str = "monitor.localhost"
    component_secret: str = "component-secret"
    hibernation_time: int = 300
    max_queue_size: int = 5000
    offline_limit: int | None = 100
    extra_config: Mapping[str, Any] = field(default_factory=dict)
    log_level: str = "info"
    #: A MUC service's domain (e.g. ``conference.localhost``); None: no MUC service.
    muc: str | None = None

    # Filled in by start(); zero/None until then.
    c2s_port: int = field(default=0, init=False)
    component_port: int = field(default=0, init=False)
    #: Erlang distribution port of the node (for the ejabberdctl-style admin calls only).
    dist_port: int = field(default=0, init=False)
    ca_file: Path = field(init=False)
    pid: int | None = field(default=None, init=False)
    log_path: Path = field(init=False)
    node: str = field(init=False)

    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _frozen: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.ca_file = self.certs_dir / "ca.crt"
        self.log_path = self.workdir / "ejabberd.log"
        self.node = f"xmppmon_{hashlib.sha256(str(self.workdir).encode()).hexdigest()[:12]}@localhost"

    # -- ejabberd's names for the mirrored knobs --------------------------------------------------

    @property
    def resume_timeout(self) -> int:
        """``mod_stream_mgmt: resume_timeout`` (seconds), set through :attr:`hibernation_time`."""
        return self.hibernation_time

    @property
    def max_ack_queue(self) -> int:
        """``mod_stream_mgmt: max_ack_queue``, set through :attr:`max_queue_size`."""
        return self.max_queue_size

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Launch ejabberd and block until it serves c2s and component streams.

        Raises :class:`EjabberdError` (with the log tails) if the VM exits, logs a fatal error or
        does not become ready within *timeout* seconds.
        """
        if self.running:
            raise EjabberdError(f"ejabberd is already running (pid {self.pid})")
        self._reap()
        libs = self._libs()
        self.mnesia_dir.mkdir(parents=True, exist_ok=True)
        self._assign_ports()
        if not (self.ca_file.exists() and self.server_cert.exists() and self.server_key.exists()):
            names = [self.domain, f"*.{self.domain}", self.component]
            self.ca_file, _, _ = write_certificates(self.certs_dir, self.domain, names)
        node.write_cookie(self.home_dir)
        node.write_inetrc(self.inetrc_path)
        storage.init_database(self.database, libs)
        self.config_path.write_text(config.config_text(self), encoding="utf-8")
        self.pidfile.unlink(missing_ok=True)
        # Truncate per start so error tails only show this attempt.
        self.log_path.write_text("", encoding="utf-8")
        self.error_log_path.write_text("", encoding="utf-8")
        self._spawn(node.vm_argv(self), self.console_path, self.data_dir, node.node_env(self, libs))
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: ``init:stop()``), escalating to SIGKILL; idempotent.

        Returns once the VM and its helper processes are gone.
        """
        helpers = self._helpers()
        super().stop(timeout)
        vm.end_processes(helpers)

    def kill(self) -> None:
        """SIGKILL the VM to simulate a crash (no clean stream shutdown); its helpers go with it."""
        helpers = self._helpers()
        super().kill()
        vm.end_processes(helpers)

    def freeze(self) -> None:
        """SIGSTOP the VM; returns once every thread of it has stopped (its idle helpers are left alone)."""
        super().freeze()
        assert self.pid is not None
        vm.wait_threads(self.pid, stopped=True, running=lambda: self.running)

    def thaw(self) -> None:
        """SIGCONT a frozen VM; returns once its threads run again."""
        super().thaw()
        assert self.pid is not None
        vm.wait_threads(self.pid, stopped=False, running=lambda: self.running)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (if still running) and start again on the same ports, node name and data."""
        self.stop()
        self.start(timeout)

    def register(self, user: str, password: str) -> str:
        """Create *user* on :attr:`domain` (or reset its password) and return the bare JID.

        On a running server this is ``ejabberdctl register`` (so the server's caches know the
        account); on a stopped one (after a first start) the account is written into the database.
        The password shows up in ``ps`` during the admin call: test accounts only.
        """
        if not self.running:
            storage.write_account(self.database, user, password)
            return f"{user}@{self.domain}"
        try:
            self.ctl("register", user, self.domain, password)
        except EjabberdError as exc:
            if "already registered" not in str(exc):
                raise
            self.ctl("change_password", user, self.domain, password)
        return f"{user}@{self.domain}"

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """Run one ``ejabberdctl`` command on the live node and return its output.

        Example: ``server.ctl("connected_users")``.
        """
        self._require_running()
        return node.ctl(self, self._libs(), args, timeout)

    def shell(self, command: str, timeout: float = 30.0) -> str:
        """``ProsodyServer.shell``'s counterpart: one ``ejabberdctl`` command line, e.g. ``"status"``."""
        return self.ctl(*shlex.split(command), timeout=timeout)

    def config(self) -> dict[str, Any]:
        """The configuration :meth:`start` writes, as a mapping (before JSON encoding)."""
        return config.render_config(self)

    # -- internals --------------------------------------------------------------------------------

    def _libs(self) -> Path:
        libs = ejabberd_libs()
        if libs is None or shutil.which(ERL) is None:
            raise EjabberdError("Debian's ejabberd is not installed (apt-get install ejabberd erlang-p1-sqlite3)")
        return libs

    def _helpers(self) -> list[vm.Process]:
        """The VM's helper processes, found while it runs (they are re-parented once it is gone)."""
        return vm.descendants(self.pid) if self.running and self.pid is not None else []

    def _assign_ports(self) -> None:
        """Pick free ports for whatever is not set yet; ports preset by the caller are kept."""
        taken: set[int] = set()
        for name in ("c2s_port", "component_port", "dist_port"):
            port = getattr(self, name)
            while not port or port in taken:
                port = free_loopback_port()
            setattr(self, name, port)
            taken.add(port)

    def _failure(self, reason: str) -> EjabberdError:
        tails = "".join(f"\n--- {p} (tail) ---\n{tail(p)}" for p in self._logs())
        return EjabberdError(reason + tails)

    def _logs(self) -> tuple[Path, Path, Path]:
        return self.log_path, self.error_log_path, self.console_path

    def _log_mentions(self, text: str) -> bool:
        return any(p.exists() and text in p.read_text(encoding="utf-8", errors="replace") for p in self._logs()[1:])

    def _fatal_log_line(self) -> str | None:
        for path in self._logs():
            if path.exists():
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    if any(marker in line for marker in FATAL_LOG_MARKERS):
                        return line.strip()
        return None

    def _exit_reason(self, code: int) -> str:
        reason = f"ejabberd exited with status {code} during startup"
        if self._log_mentions("eaddrinuse"):
            ports = f"c2s {self.c2s_port}, component {self.component_port}, distribution {self.dist_port}"
            return f"{reason}: a port is already in use ({ports}; eaddrinuse)"
        fatal = self._fatal_log_line()
        return reason if fatal is None else f"{reason}: {fatal}"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        proc = self._process
        assert proc is not None
        last_error = "no connection attempt yet"
        while True:
            code = proc.poll()
            if code is not None:
                raise self._failure(self._exit_reason(code))
            fatal = self._fatal_log_line()
            if fatal is not None:
                raise self._failure(f"ejabberd reported a startup error: {fatal}")
            try:
                exchange(self.c2s_port, c2s_header(self.domain), b"<stream:features")
                exchange(self.component_port, component_header(self.component), b"<stream:stream")
                node.start_sql_pool(self, self._libs(), deadline)  # see there: else a stanza may be dropped
                return
            except OSError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise self._failure(
                    f"ejabberd not ready on 127.0.0.1:{self.c2s_port} (c2s) / {self.component_port} (component)"
                    f" after {timeout:.1f}s; last error: {last_error}"
                )
            time.sleep(0.1)
