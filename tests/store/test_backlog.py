"""A position never runs ahead of the rows it stands for, however the backlog is split into commits.

Found by the 60-minute chaos soak (seed 60): after a locked database the writer committed its
backlog in chunks of ``max_commit_records``, and the first chunk carried the newest
``mam_last_id``, set after stanzas whose events were still in later chunks. A kill between two
chunks left the archive position past events never committed, and the next catch-up started after
them: 6,204 events lost, every one still in the server's archive.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from agent.config import StoreSettings
from agent.events import Event, parse_event
from agent.store import Store, connect_readonly
from agent.store.backlog import Backlog


def event(n: int) -> Event:
    return parse_event({"id": f"e-{n}", "kind": "activity", "app": "demo", "ts": "2026-11-22T10:00:00.000Z"},
                       f'{{"device_id":"d-{n}"}}', 65536)  # fmt: skip


def stanzas(backlog_or_store: Backlog | Store, count: int, per: int) -> None:
    """``count`` stanzas of ``per`` events, each followed by its position, as the plugin submits them."""
    for s in range(count):
        events = [event(s * per + i) for i in range(per)]
        if isinstance(backlog_or_store, Store):
            backlog_or_store.submit_events(events, "r")
            backlog_or_store.count("stanzas")
            backlog_or_store.set_state("mam_last_id", f"stanza-{s}")
        else:
            backlog_or_store.add_events(events, "r", None)
            backlog_or_store.count("stanzas", 1)
            backlog_or_store.set_state("mam_last_id", f"stanza-{s}")


def test_each_chunk_carries_the_position_of_its_own_last_stanza() -> None:
    """Three stanzas of 4 events taken 5 at a time: the positions follow the rows, never ahead."""
    backlog = Backlog()
    stanzas(backlog, 3, 4)
    backlog.state["heartbeat"] = "now"  # tied to no record: goes with the first commit
    first = backlog.take(5)
    assert len(first.batch.events) == 5
    assert first.batch.state == {"mam_last_id": "stanza-0", "heartbeat": "now"}
    assert first.batch.counters["stanzas"] == 1
    second = backlog.take(5)
    assert second.batch.state == {"mam_last_id": "stanza-1"} and second.batch.counters["stanzas"] == 1
    third = backlog.take(5)
    assert len(third.batch.events) == 2
    assert third.batch.state == {"mam_last_id": "stanza-2"} and third.batch.counters["stanzas"] == 1
    assert not backlog.has_work()


def test_a_failed_chunk_puts_its_position_back_in_order() -> None:
    """A commit that fails returns its records and its state; the retry carries the same position."""
    backlog = Backlog()
    stanzas(backlog, 2, 4)
    taken = backlog.take(5)
    backlog.put_back(taken)
    again = backlog.take(5)
    assert again.batch.state == {"mam_last_id": "stanza-0"} and again.batch.counters["stanzas"] == 1
    assert [e.event_id for e, _ in again.batch.events] == [e.event_id for e, _ in taken.batch.events]
    rest = backlog.take(5)
    assert rest.batch.state == {"mam_last_id": "stanza-1"} and len(rest.batch.events) == 3


async def test_after_a_lock_every_committed_position_is_covered_by_committed_rows(tmp_path: Path) -> None:
    """A real store and file: a backlog built while another connection holds the lock commits in chunks;
    after each commit, the stanzas up to the committed position have all their events in the table."""
    path = tmp_path / "m.db"
    store = await Store.open(StoreSettings(path=path, busy_timeout_ms=100, flush_ms=1, max_commit_records=50))
    seen: list[tuple[int, str | None]] = []

    def after_commit(_commit: object) -> None:
        conn = connect_readonly(path)
        try:
            rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            at = conn.execute("SELECT value FROM agent_state WHERE key = 'mam_last_id'").fetchone()
        finally:
            conn.close()
        seen.append((rows, at[0] if at else None))

    store.on_commit.append(after_commit)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    per = 7
    stanzas(store, 30, per)  # 210 events behind the lock: five commits of at most 50
    done = store.barrier()
    await asyncio.sleep(0.3)
    assert not done.done()
    blocker.execute("COMMIT")
    blocker.close()
    await asyncio.wait_for(done, 30)
    await store.close()
    assert len(seen) >= 4, seen
    for rows, position in seen:
        assert position is not None
        covered = (int(position.removeprefix("stanza-")) + 1) * per
        assert covered <= rows, f"position {position} committed with only {rows} event rows"
    assert seen[-1] == (210, "stanza-29")
    conn = connect_readonly(path)
    assert conn.execute("SELECT value FROM counters WHERE name = 'stanzas'").fetchone()[0] == 30
    conn.close()


def test_the_bytes_a_backlog_counts_are_the_memory_it_takes() -> None:
    """``max_backlog_mb`` bounds memory: the bytes counted for waiting events are within 30 % of what
    Python allocates for them (the count was 200 bytes of overhead a record against ~700 real, so a
    full backlog took three times the megabytes it was allowed: 231 MB of RSS in the seed-60 soak)."""
    import tracemalloc

    backlog = Backlog()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        events = [
            parse_event({"id": f"e-{n:08d}-5a1e-4e6f", "kind": "activity", "app": "demo", "ts": f"2026-11-22T10:00:{n % 60:02d}.{n % 1000:03d}Z"},
                        f'{{"device_id":"d-{n}","session_id":"s-{n}","name":"Home","duration_ms":{n}}}', 65536)
            for n in range(20_000)
        ]  # fmt: skip
        backlog.add_events(events, "2026-11-22T10:00:00.000Z", None)
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.7 * taken <= backlog.bytes <= 1.3 * taken, (backlog.bytes, taken)
