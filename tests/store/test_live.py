"""The live reads of `xmppmon top`: incremental tallies equal a full count, whatever the gaps in the ids."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from pathlib import Path

from agent.events import epoch, iso
from agent.store.live import Tally

NOW = 1_800_000_000.0


def make(path: Path, arrivals: list[tuple[float, str]]) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT, received_at TEXT)")
    conn.executemany("INSERT INTO events (kind, received_at) VALUES (?, ?)", [(k, iso(t)) for t, k in arrivals])
    conn.commit()
    return conn


def brute(conn: sqlite3.Connection, since: float, bucket: float) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    for kind, received in conn.execute("SELECT kind, received_at FROM events WHERE received_at >= ?", (iso(since),)):
        counts[(kind, int(epoch(received) // bucket))] += 1
    return counts


def test_first_read_finds_the_window_and_later_reads_add_only_new_rows(tmp_path: Path) -> None:
    """Seeded runs with deleted rows (retention leaves gaps): every read equals a brute-force count of the window."""
    for seed in range(5):
        rng = random.Random(seed)
        times = sorted(NOW - rng.uniform(0, 1200) for _ in range(rng.randint(0, 400)))
        conn = make(tmp_path / f"{seed}.db", [(t, rng.choice("ab")) for t in times])
        conn.execute("DELETE FROM events WHERE id % ? = 0", (rng.randint(2, 7),))
        conn.commit()
        tally = Tally("events", "kind", bucket=20.0)
        tally.read(conn, NOW - 600)
        assert +tally.buckets == brute(conn, NOW - 600, 20.0), seed
        later = sorted(NOW + rng.uniform(0, 120) for _ in range(50))
        conn.executemany("INSERT INTO events (kind, received_at) VALUES (?, ?)", [("b", iso(t)) for t in later])
        conn.commit()
        tally.read(conn, NOW + 120 - 600)
        assert +tally.buckets == brute(conn, NOW + 120 - 600, 20.0), seed
        conn.close()


def test_totals_count_every_row_once(tmp_path: Path) -> None:
    """With totals, rows before the window and within it are each counted once, and new rows add up."""
    conn = make(tmp_path / "t.db", [(NOW - 3000 + i, "x" if i % 3 else "y") for i in range(3000)])
    tally = Tally("events", "kind", bucket=10.0, totals=True)
    tally.read(conn, NOW - 300)
    assert tally.total == Counter({"x": 2000, "y": 1000})
    conn.execute("INSERT INTO events (kind, received_at) VALUES ('y', ?)", (iso(NOW),))
    conn.commit()
    tally.read(conn, NOW - 300)
    assert tally.total == Counter({"x": 2000, "y": 1001})
    conn.close()
