"""The store against real SQLite files: WAL, migrations, group commit, de-duplication, barriers."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.config import StoreSettings
from agent.events import Event, parse_event
from agent.exceptions import StoreClosedError, StoreError
from agent.store import Quarantined, Store, connect_readonly, writer
from agent.store.schema import MIGRATIONS, SCHEMA_VERSION


def make_event(n: int, kind: str = "activity", ts: str = "2026-11-22T10:00:00.000Z") -> Event:
    payloads = {
        "activity": '{"device_id":"d-%d"}',
        "api": '{"api":"reach","status":504,"method":"GET","path":"/x","latency_ms":5}',
        "device": '{"device_id":"d-%d","model":"m"}',
        "tag": '{"device_id":"d-%d","name":"plan","value":"gold"}',
        "token": '{"device_id":"d-%d","token":"t","valid":true}',
        "push": '{"device_id":"d-%d","campaign_id":"c1","action":"displayed"}',
    }
    text = payloads[kind].replace("%d", str(n))
    return parse_event({"id": f"e-{n}", "kind": kind, "app": "demo", "ts": ts}, text, 65536)


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(StoreSettings(path=tmp_path / "m.db", flush_ms=5))
    yield s
    await s.close()


async def test_open_creates_wal_database_with_private_permissions(tmp_path: Path) -> None:
    """A new database is in WAL mode, migrated, and neither it nor its WAL is world-readable."""
    store = await Store.open(StoreSettings(path=tmp_path / "sub" / "m.db"))
    store.submit_events([make_event(1)], "2026-11-22T10:00:00.000Z")
    await store.barrier()
    for name in ("m.db", "m.db-wal"):
        mode = (tmp_path / "sub" / name).stat().st_mode
        assert not mode & stat.S_IROTH and not mode & stat.S_IWOTH, (name, oct(mode))
    await store.close()
    conn = sqlite3.connect(tmp_path / "sub" / "m.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_reopen_keeps_data_and_does_not_reapply_migrations(tmp_path: Path) -> None:
    """Opening an existing database twice applies each migration once and keeps the rows."""
    settings = StoreSettings(path=tmp_path / "m.db")
    for _ in range(2):
        store = await Store.open(settings)
        store.submit_events([make_event(1)], "r")
        await store.barrier()
        await store.close()
    conn = sqlite3.connect(settings.path)
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    conn.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer xmppmon is refused with a clear error, not misread."""
    settings = StoreSettings(path=tmp_path / "m.db")
    await (await Store.open(settings)).close()
    conn = sqlite3.connect(settings.path)
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this xmppmon"):
        await Store.open(settings)


async def test_duplicates_leave_one_row_and_are_counted(store: Store) -> None:
    """The same event submitted twice, in one batch or two, is stored once and counted as duplicate."""
    events = [make_event(i) for i in range(100)] + [make_event(i, "api") for i in range(100, 110)]
    store.submit_events(events, "r")
    store.submit_events(events[:10], "r")
    await store.barrier()
    store.submit_events(events, "r")
    await store.barrier()
    conn = connect_readonly(store.settings.path)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 100
    assert conn.execute("SELECT count(*) FROM api_calls").fetchone()[0] == 10
    counters = {r[0]: r[1] for r in conn.execute("SELECT name, value FROM counters")}
    assert counters["events_duplicate"] == 120
    assert counters["events_received"] == 230
    conn.close()


async def test_state_kinds_keep_the_newest_value(store: Store) -> None:
    """State upserts keep the value with the newest event time, whatever the arrival order."""
    new = make_event(1, "tag", ts="2026-11-22T10:00:02.000Z")
    old = parse_event(
        {"id": "old", "kind": "tag", "app": "demo", "ts": "2026-11-22T10:00:01.000Z"},
        '{"device_id":"d-1","name":"plan","value":"silver"}',
        65536,
    )
    store.submit_events([new, old, make_event(2, "device"), make_event(3, "token")], "r")
    store.submit_events([make_event(4, "push"), make_event(4, "push")], "r")
    await store.barrier()
    conn = connect_readonly(store.settings.path)
    assert [tuple(r) for r in conn.execute("SELECT value, event_id FROM tags")] == [('"gold"', "e-1")]
    assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == 1
    assert conn.execute("SELECT valid FROM tokens").fetchone()[0] == 1
    assert conn.execute("SELECT action FROM push_feedback").fetchone()[0] == "displayed"
    conn.close()


async def test_barrier_records_stream_position_with_the_events(store: Store) -> None:
    """A barrier's XEP-0198 position is committed in the same transaction as the events before it."""
    store.submit_events([make_event(1)], "r")
    await store.barrier(sm_id="abc", handled=7)
    state = await store.read_state()
    assert state["sm_id"] == "abc" and state["sm_handled"] == "7"
    assert store.committed_events == 1


async def test_quarantine_rows_keep_reason_and_raw(store: Store) -> None:
    """A quarantined event is stored with its reason, raw text and sender."""
    store.submit_quarantine(Quarantined("bad", "<event/>", "x@y", None, None, "r"))
    await store.barrier()
    conn = connect_readonly(store.settings.path)
    rows = [tuple(r) for r in conn.execute("SELECT reason, raw, sender FROM quarantine")]
    assert rows == [("bad", "<event/>", "x@y")]
    conn.close()


async def test_writer_waits_for_a_locked_database_and_loses_nothing(tmp_path: Path) -> None:
    """While another connection holds the write lock, commits wait and then land, all of them."""
    settings = StoreSettings(path=tmp_path / "m.db", busy_timeout_ms=100, flush_ms=1)
    store = await Store.open(settings)
    blocker = sqlite3.connect(settings.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    store.submit_events([make_event(i) for i in range(50)], "r")
    done = store.barrier()
    await asyncio.sleep(0.5)
    assert not done.done()
    assert not store.healthy and "locked" in (store.last_error or "")
    blocker.execute("COMMIT")
    blocker.close()
    await asyncio.wait_for(done, 10)
    assert store.healthy
    await store.close()
    conn = connect_readonly(settings.path)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 50
    conn.close()


async def test_close_is_idempotent_and_use_after_close_raises(tmp_path: Path) -> None:
    """close() commits pending records, can be called twice, and later use raises."""
    store = await Store.open(StoreSettings(path=tmp_path / "m.db", flush_ms=10_000))
    store.submit_events([make_event(1)], "r")
    await store.close()
    await store.close()
    with pytest.raises(StoreClosedError):
        store.submit_events([make_event(2)], "r")
    conn = connect_readonly(tmp_path / "m.db")
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    conn.close()


async def test_unopenable_path_is_a_clear_error(tmp_path: Path) -> None:
    """A database path inside a regular file fails with StoreError naming the path."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot open database"):
        await Store.open(StoreSettings(path=tmp_path / "file" / "m.db"))


def test_readonly_connection_cannot_write(tmp_path: Path) -> None:
    """connect_readonly refuses writes and a missing file."""
    with pytest.raises(StoreError, match="does not exist"):
        connect_readonly(tmp_path / "none.db")
    sqlite3.connect(tmp_path / "x.db").close()
    conn = connect_readonly(tmp_path / "x.db")
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("CREATE TABLE t (x)")
    conn.close()


async def test_writer_survives_an_unexpected_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug raising inside one write is logged and retried: the writer task lives on and stores the batch."""
    store = await Store.open(StoreSettings(path=tmp_path / "m.db", flush_ms=1))
    real_write, calls = writer.write_batch, []

    async def flaky(*args: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return await real_write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(writer, "write_batch", flaky)
    store.submit_events([make_event(1)], "r")
    await asyncio.wait_for(store.barrier(), 10)
    assert len(calls) >= 2 and store.healthy
    await store.close()
    conn = connect_readonly(tmp_path / "m.db")
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    conn.close()


async def test_a_forgotten_stream_is_not_written_back(store: Store) -> None:
    """After forget_stream(), a barrier queued before it does not store the dead stream's id again."""
    await store.barrier(sm_id="old", handled=3)
    pending = store.barrier(sm_id="old", handled=5)
    store.forget_stream()
    await pending
    state = await store.read_state()
    assert state["sm_id"] is None
    await store.barrier(sm_id="new", handled=1)
    assert (await store.read_state())["sm_id"] == "new"


async def test_a_retried_batch_counts_its_events_once(tmp_path: Path) -> None:
    """A commit that fails after the counters were prepared is retried without counting its events twice."""
    path = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=path, flush_ms=1))
    await store.barrier()
    outside = sqlite3.connect(path, isolation_level=None)
    outside.execute(
        "CREATE TRIGGER fail_once BEFORE INSERT ON counters BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    store.submit_events([make_event(i) for i in range(5)], "r")
    done = store.barrier()
    for _ in range(200):
        if not store.healthy:
            break
        await asyncio.sleep(0.01)
    assert not store.healthy, "the injected failure did not happen"
    outside.execute("DROP TRIGGER fail_once")
    outside.close()
    await asyncio.wait_for(done, 10)
    await store.close()
    conn = connect_readonly(path)
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 5
    conn.close()
    assert counters["events_received"] == 5
