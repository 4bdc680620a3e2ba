"""ejabberd as Debian installs it: where its Erlang application and SQLite schema are, its version.

Nothing here starts a node. :func:`ejabberd_available` is what the test suite checks before it
collects an ``ejabberd`` test (it fails, never skips, when this returns False).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from pathlib import Path

from agent.exceptions import LabError

ERL = "erl"
EJABBERDCTL = Path("/usr/sbin/ejabberdctl")
#: Where Debian's erlang-p1-sqlite3 puts the SQLite driver ejabberd's ``sql_type: sqlite`` needs.
ERLANG_LIBS = Path("/usr/lib/erlang/lib")

# ejabberd logs these (ejabberd.log / error.log) when it cannot serve what the config asks for;
# some of them leave the VM running without the listener, so waiting would only end at the timeout.
FATAL_LOG_MARKERS = (
    "Failed to open socket",
    "Failed to start ejabberd application",
    "Failed to load configuration",
    "Invalid value of option",
    "Unknown option",
    "Failed to start module",
    "Failed to read",
)

# Outside variables that would make erl read another config, cookie or code path.
ERL_ENV_DROP = (
    "ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS", "ERL_EPMD_PORT", "ERL_EPMD_ADDRESS", "ERL_DIST_PORT",
    "ERL_INETRC", "ERL_LIBS", "EJABBERD_CONFIG_PATH", "EJABBERDCTL_CONFIG_PATH", "EJABBERD_LOG_PATH",
    "EJABBERD_PID_PATH", "EJABBERD_MACRO", "CONTRIB_MODULES_PATH", "CONTRIB_MODULES_CONF_DIR",
)  # fmt: skip


class EjabberdError(LabError):
    """ejabberd could not be configured, started, stopped or administered."""


def ejabberd_libs() -> Path | None:
    """The directory holding ``ejabberd-<version>/`` (Debian: ``/usr/lib/<multiarch>``).

    ``ejabberdctl`` hard-codes it as ``ERL_LIBS``; read it from there, else look for the app.
    """
    with contextlib.suppress(OSError):
        match = re.search(r"^ERL_LIBS='([^']+)'", EJABBERDCTL.read_text(encoding="utf-8"), re.MULTILINE)
        if match and any(Path(match.group(1)).glob("ejabberd-*/ebin/ejabberd.app")):
            return Path(match.group(1))
    for app in sorted(Path("/usr/lib").glob("*/ejabberd-*/ebin/ejabberd.app")):
        return app.parent.parent.parent
    return None


def schema_file(libs: Path) -> Path | None:
    """The SQLite schema ejabberd ships for the old (single-host) SQL layout."""
    for path in sorted(libs.glob("ejabberd-*/priv/sql/lite.sql")):
        return path
    fallback = Path("/usr/share/ejabberd/sql/lite.sql")
    return fallback if fallback.is_file() else None


def ejabberd_available() -> bool:
    """Return True if ``erl``, the ejabberd application, its SQLite schema and driver are installed."""
    libs = ejabberd_libs()
    return (
        shutil.which(ERL) is not None
        and libs is not None
        and schema_file(libs) is not None
        and any(ERLANG_LIBS.glob("p1_sqlite3-*/ebin/sqlite3.beam"))
    )


def ejabberd_version() -> str:
    """Return the installed ejabberd package version (e.g. ``23.01-1``), without starting a node."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "ejabberd"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EjabberdError(f"cannot determine the ejabberd version: {exc}") from exc
    version = result.stdout.strip()
    if not version:
        raise EjabberdError("dpkg-query reported no version for the ejabberd package")
    return version
