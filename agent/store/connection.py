"""Opening the database: the private file, read-only connections, the writing connection and migrations.

Schema changes are numbered migrations (``agent.store.schema``) applied in order, each in the
transaction that records it; the agent and the sidecar may start together on a new database and
only one of them applies each migration.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import aiosqlite
from loguru import logger

from agent.events import utc_now
from agent.exceptions import StoreError
from agent.store.schema import MIGRATIONS, SCHEMA_VERSION

log = logger.bind(component="store")

#: A WAL larger than this is truncated back to it once checkpointed (``journal_size_limit``).
WAL_LIMIT_BYTES = 64 * 1024 * 1024


def create_private_file(path: Path) -> None:
    """Create the database file owner-read-write, group-read, before SQLite does.

    SQLite gives the ``-wal`` and ``-shm`` files the permissions of the database file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))


def connect_readonly(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection for the CLI and the sidecar's reads; never blocks the writer."""
    if not path.exists():
        raise StoreError(f"database {path} does not exist: has the agent run with this path?")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path} read-only: {exc}") from None
    conn.row_factory = sqlite3.Row
    return conn


async def migrate(conn: aiosqlite.Connection) -> int:
    """Apply the migrations the database lacks; return the schema version."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    async with conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {current} is newer than this xmppmon ({SCHEMA_VERSION}): upgrade xmppmon"
        )
    for version, name, script in MIGRATIONS:
        if version <= current:
            continue
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: the agent and the sidecar may start together on a
            # new database, and only one of them must apply each migration.
            async with conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations") as cursor:
                row = await cursor.fetchone()
            if row and int(row[0]) >= version:
                await conn.commit()
                continue
            for statement in _statements(script):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, utc_now()),
            )
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
        log.info("applied migration {} ({})", version, name)
    return SCHEMA_VERSION


async def open_writer(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    """A writing connection, private file mode, WAL, synchronous=NORMAL, busy_timeout, migrated.

    A new file gets ``auto_vacuum = INCREMENTAL``; the WAL is truncated to ``WAL_LIMIT_BYTES``
    after a checkpoint resets it (``journal_size_limit``).

    The agent's store and the sidecar's outbox each open one; StoreError says what went wrong.
    """
    try:
        create_private_file(path)
        new = path.stat().st_size == 0
        conn = await aiosqlite.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    try:
        if new:
            # Only before the first table exists: pruned pages can then go back to the file system
            # in small steps (agent.store.retention); an older file is converted by `xmppmon db vacuum`.
            await conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
        async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
            mode = await cursor.fetchone()
        if not mode or mode[0].lower() != "wal":
            raise StoreError(f"database {path} cannot use WAL mode (got {mode})")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await migrate(conn)
    except sqlite3.Error as exc:
        await conn.close()
        raise StoreError(f"cannot prepare database {path}: {exc}") from None
    except BaseException:
        await conn.close()
        raise
    return conn


def _statements(script: str) -> Iterable[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""
