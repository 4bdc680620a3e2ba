"""The soak's XMPP server, Prosody or ejabberd: how each is set up, where its logs are, what it archived.

Both are the lab's private servers (``agent/lab``), built with the settings docs/servers.md tells
an operator to use, and both keep their archive in SQLite so that the loss analysis can ask "is a
lost event still on the server?" and "when did the server archive the id the agent resumed from?".

Prosody: ``smacks_max_queue_size`` 100 (it overflows after ~2.5 s down at the base rate, so an
agent kill ends in an archive catch-up), hibernation 30 s, the archive in SQL (``--archive sql``).

ejabberd: ``resume_timeout`` 30 s, ``max_ack_queue`` 500, no c2s shaper, SQL (SQLite) storage for
MAM, no offline limit. ``max_ack_queue`` is checked on a *connected* stream too (docs/servers.md):
ejabberd ends a session as soon as that many stanzas wait for an acknowledgement, and a MAM page of
the agent (250 results) must fit, with the live traffic beside it, or every catch-up would end its
own session. 500 is 12 s of the base rate, 6 s of a burst: agent kills of the catch-up kind (6-14 s
down) often overflow it and end in an archive catch-up, as Prosody's 100 does, and the longer disk
faults sometimes overflow it on a connected stream, which Prosody never does. The offline limit is
lifted (docs/servers.md: "raise it for the agent's account"; Prosody has none); ejabberd keeps every
message in its archive either way.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path

from agent.lab.ejabberd import EjabberdServer
from agent.lab.prosody import ProsodyServer
from agent.lab.servers import SERVER_KINDS, XmppServer

#: Prosody's archive in SQLite (mod_storage_sql, Debian's lua-dbi-sqlite3). Its internal storage
#: reads and parses the whole archive file for every MAM page, so a catch-up that pages through a
#: few minutes of this stream takes minutes: a server limit, not the agent's. "--archive internal" keeps it.
#: Set for the virtual host: a second global ``storage`` would be a duplicate option, which Prosody
#: 0.12 reports with a line number it cannot find when the config's path is long (it then refuses
#: the config: "bad argument #2 to 'format'"). The template opens the same host again after this.
SQL_ARCHIVE = """
VirtualHost "{domain}"
storage = {{ archive = "sql" }}
sql = {{ driver = "SQLite3", database = "prosody.sqlite" }}
"""
SERVER_QUEUE = 100  # Prosody's smacks_max_queue_size: overflows after ~2.5 s down at the base rate
EJABBERD_QUEUE = 500  # ejabberd's max_ack_queue (see the module docstring)
HIBERNATION = 30  # smacks_hibernation_time / resume_timeout
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def build(kind: str, work: Path, archive: str = "sql") -> XmppServer:
    """The soak's server of ``kind`` under ``work``, not started yet."""
    if kind == "prosody":
        if archive == "sql" and not list(Path("/usr/lib").glob("*/lua/5.*/dbd/sqlite3.so")):
            raise RuntimeError(
                "Prosody's SQL archive needs Debian's lua-dbi-sqlite3 (make deps installs it); or run with --archive internal"
            )
        return ProsodyServer(
            work / "prosody", hibernation_time=HIBERNATION, max_queue_size=SERVER_QUEUE,
            extra_config=SQL_ARCHIVE.format(domain="localhost") if archive == "sql" else "",
        )  # fmt: skip
    if kind == "ejabberd":
        if archive != "sql":
            raise RuntimeError("ejabberd's archive is in SQL only here (its Mnesia storage stops near 2 GB)")
        return EjabberdServer(
            work / "ejabberd", hibernation_time=HIBERNATION, max_queue_size=EJABBERD_QUEUE, offline_limit=None
        )
    raise RuntimeError(f"unknown server {kind!r}: choose one of {', '.join(SERVER_KINDS)}")


def logs(server: XmppServer) -> list[tuple[Path, str]]:
    """The server's log files (truncated at each start) and the name each run's copy is kept under."""
    if isinstance(server, EjabberdServer):
        return [(server.log_path, "ejabberd"), (server.error_log_path, "ejabberd-error"),
                (server.console_path, "ejabberd-console")]  # fmt: skip
    assert isinstance(server, ProsodyServer)
    return [(server.log_path, "prosody"), (server.console_path, "prosody-console")]


def _rows(path: Path, query: str) -> list[tuple[str, float, str]]:
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [(str(k), float(w), str(v)) for k, w, v in conn.execute(query)]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def sql_archive(server: XmppServer) -> list[tuple[str, float, str]]:
    """(archive id, when archived in epoch seconds, stanza) of every item of the server's SQL archive.

    ejabberd's archive id is its ``timestamp`` column (microseconds; the XEP-0359 id it hands out).
    """
    if isinstance(server, EjabberdServer):
        return _rows(server.database, "SELECT timestamp, timestamp / 1e6, xml FROM archive")
    assert isinstance(server, ProsodyServer)
    return _rows(server.data_dir / "prosody.sqlite",
                 'SELECT key, "when", value FROM prosodyarchive WHERE store = \'archive\'')  # fmt: skip


def _archive_files(server: XmppServer) -> list[Path]:
    """Prosody's internal archive storage (files); ejabberd keeps its archive in SQL only."""
    if isinstance(server, EjabberdServer):
        return []
    assert isinstance(server, ProsodyServer)
    data_dir = server.data_dir
    return [p for p in data_dir.rglob("*") if p.is_file() and "archive" in str(p.relative_to(data_dir))]


def archived_ids(server: XmppServer) -> set[str]:
    """Every UUID in the server's archive (files or SQL) (for "is the lost event still on the server?")."""
    out: set[str] = set()
    for path in _archive_files(server):
        out.update(UUID.findall(path.read_bytes().decode(errors="replace")))
    for _key, _when, value in sql_archive(server):
        out.update(UUID.findall(value))
    return out


def archive_times(server: XmppServer) -> dict[str, float]:
    """Archive id (XEP-0359 stanza-id) -> when the server archived it, from its internal or SQL storage."""
    key = re.compile(rb'\["key"\] = "([^"]+)";')
    when = re.compile(rb'\["when"\] = ([0-9.]+);')
    out: dict[str, float] = {}
    for path in _archive_files(server):
        for item in path.read_bytes().split(b"item({")[1:]:
            k, w = key.search(item), when.search(item)
            if k and w:
                out[k.group(1).decode()] = float(w.group(1))
    out.update((k, w) for k, w, _v in sql_archive(server))  # whole seconds in Prosody's
    return out


def archive_inspected(server: XmppServer) -> bool:
    """Whether there was an archive to read (False: the loss analysis could not look on the server)."""
    with contextlib.suppress(OSError):
        return bool(_archive_files(server)) or bool(sql_archive(server))
    return False
