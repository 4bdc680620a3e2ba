"""The operator's database commands in SQL: ``xmppmon db stats``, ``db backup`` and ``db vacuum``.

``stats`` and ``backup`` only read (a read-only connection, so they run beside the agent);
``backup`` copies with SQLite's online backup API in one step, which is one read transaction: a
consistent copy however busy the writer is, written under a temporary name and renamed into
place. ``vacuum`` rewrites the whole file (and so holds the write lock for its duration); it
first checks that the file systems have room for the copy it makes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from agent.events import epoch
from agent.exceptions import StoreError
from agent.store.connection import connect_readonly, create_private_file

MB = 1_000_000
#: The time column of each table, for its oldest and newest row.
TIME_COLUMNS = {
    "events": "ts", "api_calls": "ts", "devices": "ts", "tags": "ts", "tokens": "ts", "push_feedback": "ts",
    "quarantine": "received_at", "alerts": "last_seen", "notifications": "created_at",
    "deliveries": "finished_at", "delivery_state": "updated_at", "export_jobs": "created_at",
}  # fmt: skip
AUTO_VACUUM = {0: "none", 1: "full", 2: "incremental"}


def _size(path: Path | str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _pragma(conn: sqlite3.Connection, name: str) -> Any:
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def stats(path: Path) -> dict[str, Any]:
    """Files, pages, and per table and index: rows, bytes (dbstat, when SQLite has it), oldest and newest."""
    conn = connect_readonly(path)
    try:
        page_size, pages, free = (_pragma(conn, n) for n in ("page_size", "page_count", "freelist_count"))
        try:
            sizes = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
        except sqlite3.OperationalError:  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
            sizes = None
        objects = []
        master = (
            "SELECT type, name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"
            " ORDER BY tbl_name, type DESC, name"
        )
        for kind, name, table in conn.execute(master).fetchall():
            entry: dict[str, Any] = {"name": name, "type": kind, "table": table, "rows": None, "bytes": None,
                                     "oldest": None, "newest": None}  # fmt: skip
            if sizes is not None:
                entry["bytes"] = sizes.get(name, 0)
            if kind == "table":
                entry["rows"] = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                column = TIME_COLUMNS.get(name)
                if column:
                    entry["oldest"], entry["newest"] = conn.execute(
                        f"SELECT min({column}), max({column}) FROM {name}"
                    ).fetchone()
            objects.append(entry)
        auto_vacuum = AUTO_VACUUM.get(_pragma(conn, "auto_vacuum"), "?")
        journal = _pragma(conn, "journal_mode")
    finally:
        conn.close()
    return {
        "database": str(path), "file_bytes": _size(path), "wal_bytes": _size(f"{path}-wal"),
        "shm_bytes": _size(f"{path}-shm"), "page_size": page_size, "pages": pages, "freelist_pages": free,
        "freelist_bytes": free * page_size, "auto_vacuum": auto_vacuum, "journal_mode": journal,
        "dbstat": sizes is not None, "objects": objects,
    }  # fmt: skip


def _free(folder: Path) -> int:
    fs = os.statvfs(folder)
    return fs.f_bavail * fs.f_frsize


def _need(path: Path) -> int:
    """Bytes a copy of the database takes: its pages in use."""
    conn = connect_readonly(path)
    try:
        return int((_pragma(conn, "page_count") - _pragma(conn, "freelist_count")) * _pragma(conn, "page_size"))
    finally:
        conn.close()


def backup(path: Path, dest: Path) -> dict[str, Any]:
    """A consistent copy of the database at ``dest`` (a single file, no WAL), replaced atomically."""
    dest = dest.absolute()
    if dest.is_dir():
        raise StoreError(f"backup destination {dest} is a directory: give the backup's file name")
    if dest.exists() and dest.resolve() == path.resolve():
        raise StoreError(f"backup destination {dest} is the database itself")
    if not dest.parent.is_dir():
        raise StoreError(f"backup destination folder {dest.parent} does not exist")
    need, free = _need(path), _free(dest.parent)
    if free < need:
        raise StoreError(f"not enough space for the backup: it needs about {need / MB:.1f} MB in {dest.parent},"
                         f" {free / MB:.1f} MB are free")  # fmt: skip
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    started = time.monotonic()
    src = connect_readonly(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        create_private_file(tmp)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)  # every page in one step: one read transaction, so one consistent state
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            check = _pragma(dst, "quick_check")
        finally:
            dst.close()
        if check != "ok":
            raise StoreError(f"the backup failed its quick_check ({check}); {dest} was left as it was")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        folder = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"backup to {dest} failed: {exc}") from None
    finally:
        src.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return {"path": str(dest), "bytes": _size(dest), "seconds": time.monotonic() - started}


def _sqlite_temp_dir(fallback: Path) -> Path:
    """Where SQLite writes VACUUM's temporary copy (its Unix search order)."""
    for name in (os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"), "/var/tmp", "/usr/tmp", "/tmp"):
        if name and os.path.isdir(name) and os.access(name, os.W_OK | os.X_OK):
            return Path(name)
    return fallback


def agent_running(path: Path, fresh_seconds: float) -> str | None:
    """A description of the agent writing this database, if its heartbeat is fresh and its process alive."""
    conn = connect_readonly(path)
    try:
        state = dict(conn.execute("SELECT key, value FROM agent_state WHERE key IN ('heartbeat', 'pid')").fetchall())
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    if not state.get("heartbeat") or not state.get("pid"):
        return None
    age = time.time() - epoch(state["heartbeat"])
    try:
        os.kill(int(state["pid"]), 0)
    except (ProcessLookupError, ValueError):
        return None
    except PermissionError:
        pass
    return f"pid {state['pid']}, heartbeat {age:.0f} s ago" if age <= fresh_seconds else None


def vacuum(path: Path, busy_timeout_ms: int) -> dict[str, Any]:
    """Rewrite the database with ``auto_vacuum = INCREMENTAL`` (VACUUM), after checking for room."""
    need = _need(path)
    folder = path.resolve().parent
    temp = _sqlite_temp_dir(folder)
    # VACUUM builds the new database in a temporary file, then writes it back through the WAL.
    same = temp.stat().st_dev == folder.stat().st_dev
    wants = {folder: 2 * need} if same else {folder: need, temp: need}
    for where, bytes_ in wants.items():
        if _free(where) < bytes_:
            why = "twice the database's size: its temporary copy goes there too" if same else "the database's size"
            raise StoreError(
                f"not enough free space to vacuum {path}: it needs about {bytes_ / MB:.1f} MB free in {where}"
                f" ({why}), {_free(where) / MB:.1f} MB are free; nothing was changed"
            )
    before = _size(path) + _size(f"{path}-wal")
    started = time.monotonic()
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
        try:
            mode = AUTO_VACUUM.get(_pragma(conn, "auto_vacuum"), "?")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            now = AUTO_VACUUM.get(_pragma(conn, "auto_vacuum"), "?")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"vacuum of {path} failed: {exc}") from None
    after = _size(path) + _size(f"{path}-wal")
    return {"path": str(path), "seconds": time.monotonic() - started, "before_bytes": before, "after_bytes": after,
            "freed_bytes": before - after, "auto_vacuum_was": mode, "auto_vacuum": now}  # fmt: skip
