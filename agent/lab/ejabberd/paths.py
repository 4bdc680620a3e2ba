"""Where a private ejabberd keeps everything: one work directory, nothing outside it."""

from __future__ import annotations

from pathlib import Path


class EjabberdPaths:
    """Mixin of :class:`~agent.lab.ejabberd.server.EjabberdServer`: its files, from ``workdir``."""

    workdir: Path
    domain: str

    @property
    def config_path(self) -> Path:
        """The config file (JSON, read as YAML), rewritten on every start."""
        return self.workdir / "ejabberd.yml"

    @property
    def certs_dir(self) -> Path:
        """Directory holding the throwaway CA and the server certificate."""
        return self.workdir / "certs"

    @property
    def data_dir(self) -> Path:
        """ejabberd's spool: the Mnesia directory and the SQLite database; the VM's working directory."""
        return self.workdir / "data"

    @property
    def mnesia_dir(self) -> Path:
        """Mnesia's directory (schema and RAM-table bookkeeping; no user data with SQL storage)."""
        return self.data_dir / "mnesia"

    @property
    def database(self) -> Path:
        """The SQLite database holding accounts, rosters, offline messages and the MAM archive."""
        return self.data_dir / "ejabberd.db"

    @property
    def pidfile(self) -> Path:
        """Pidfile written by ejabberd (``EJABBERD_PID_PATH``)."""
        return self.workdir / "ejabberd.pid"

    @property
    def error_log_path(self) -> Path:
        """ejabberd's ``error.log`` (errors only), next to its main log."""
        return self.workdir / "error.log"

    @property
    def console_path(self) -> Path:
        """The VM's stdout/stderr; config errors and boot failures show up here."""
        return self.workdir / "ejabberd.console.log"

    @property
    def home_dir(self) -> Path:
        """``HOME`` of the VM and of admin calls: holds the private ``.erlang.cookie``."""
        return self.workdir / "home"

    @property
    def inetrc_path(self) -> Path:
        """The VM's inet configuration (``ERL_INETRC``): its DNS client asks no name server."""
        return self.workdir / "inetrc"

    @property
    def server_cert(self) -> Path:
        """Server certificate covering the domain, ``*.domain`` and the component."""
        return self.certs_dir / f"{self.domain}.crt"

    @property
    def server_key(self) -> Path:
        """Private key of :attr:`server_cert`."""
        return self.certs_dir / f"{self.domain}.key"
