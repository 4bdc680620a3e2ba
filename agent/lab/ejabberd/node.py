"""The private Erlang node: its command line, environment and cookie, and admin calls to it.

The VM is started with ``erl`` directly (not ``ejabberdctl``, which reads
``/etc/ejabberd/ejabberdctl.cfg`` and switches to the ``ejabberd`` user). Distribution runs
without epmd (``-erl_epmd_port PORT -start_epmd false``): the node listens on a private loopback
port that the admin calls go to, so no epmd is started, shared with others, or left behind. The
cookie is ``$HOME/.erlang.cookie`` with ``HOME`` inside the work directory, so it never shows up in
``ps``. The VM's own DNS client gets no name server (``ERL_INETRC``): a stanza to a component that is
not connected makes ejabberd try server-to-server, and its DNS query must not leave the machine.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent.lab.ejabberd.installed import ERL, ERL_ENV_DROP, EjabberdError

if TYPE_CHECKING:
    from agent.lab.ejabberd.server import EjabberdServer


def erlang_string(value: str | Path) -> str:
    """Quote text as an Erlang string literal (for ``-mnesia dir``)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def dist_args(server: EjabberdServer) -> list[str]:
    """epmd-less distribution: the node listens on ``dist_port`` and registers with no epmd."""
    return ["-erl_epmd_port", str(server.dist_port), "-start_epmd", "false"]


def vm_argv(server: EjabberdServer) -> list[str]:
    return [
        ERL,
        "-sname", server.node,
        "-noinput",
        *dist_args(server),
        "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
        # No busy-waiting schedulers: the test machine's cores are shared.
        "+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none",
        "-mnesia", "dir", erlang_string(server.mnesia_dir),
        # Critical messages only on the console: the log file has the rest.
        "-ejabberd", "quiet", "true",
        "-s", "ejabberd",
    ]  # fmt: skip


def node_env(server: EjabberdServer, libs: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ERL_ENV_DROP}
    env.update({
        "HOME": str(server.home_dir),
        "ERL_LIBS": str(libs),
        "EJABBERD_CONFIG_PATH": str(server.config_path),
        "EJABBERD_LOG_PATH": str(server.log_path),
        "EJABBERD_PID_PATH": str(server.pidfile),
        "CONTRIB_MODULES_PATH": str(server.workdir / "contrib"),
        "ERL_CRASH_DUMP": str(server.workdir / "erl_crash.dump"),
        "ERL_CRASH_DUMP_BYTES": "0",
        "ERL_INETRC": str(server.inetrc_path),
    })  # fmt: skip
    return env


def write_inetrc(path: Path) -> None:
    """No resolv.conf, no hosts file: every DNS lookup of the VM fails at once, on the machine."""
    path.write_text('{resolv_conf, ""}.\n{hosts_file, ""}.\n', encoding="ascii")


def write_cookie(home: Path) -> None:
    """A random cookie, once; erl refuses a cookie file others can read."""
    cookie = home / ".erlang.cookie"
    if cookie.exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    cookie.write_text(secrets.token_hex(20), encoding="ascii")
    cookie.chmod(0o400)


def ctl(server: EjabberdServer, libs: Path, args: tuple[str, ...], timeout: float) -> str:
    """Run one ``ejabberdctl`` command on the live node: a hidden node (about 0.5 s) connects to it."""
    argv = [
        ERL,
        "-sname", f"ctl_{secrets.token_hex(4)}@localhost",
        "-hidden", "-noinput",
        *dist_args(server), "-dist_listen", "false",
        "-s", "ejabberd_ctl",
        "-extra", server.node, *args,
    ]  # fmt: skip
    # Never echo the arguments: register's include a password.
    what = f"ejabberdctl {args[0] if args else ''}".strip()
    try:
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=server.workdir,
            env=node_env(server, libs), timeout=timeout, check=False, start_new_session=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise EjabberdError(f"{what} failed: {exc}") from exc
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise EjabberdError(f"{what} exited with status {result.returncode}: {output or '<no output>'}")
    return output


def start_sql_pool(server: EjabberdServer, libs: Path, deadline: float) -> None:
    """Make ejabberd start its SQL pool now, with one query, before anything else uses it.

    ejabberd 23.01 starts the pool lazily, at the first query, and a query made by another process
    while it starts fails (badarg in ``ejabberd_sql:get_worker/1``): a stanza routed then is dropped
    without a trace (no archive row, no offline row, no bounce). A client that logs in meanwhile
    (the port is open) may start it first and make this call fail: it is retried until ``deadline``
    (``time.monotonic()``).
    """
    while True:
        try:
            ctl(server, libs, ("registered_users", server.domain), max(1.0, deadline - time.monotonic()))
            return
        except EjabberdError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.1)
