"""`xmppmon top`: one frame with --once, and the live view in a real terminal (tmux) against a running agent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab.prosody import ProsodyServer
from agent.reasons import reason_class

from ..observed import HISTORY_KINDS, Deployment, deployment, poll_until, require, rows

pytestmark = [pytest.mark.prosody, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def observed(prosody: ProsodyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(prosody, tmp_path_factory.mktemp("top")) as d:
        d.wave(1000, seed=41)
        poll_until(lambda: rows(d.db, "SELECT count(*) FROM deliveries WHERE sink = 'hook'")[0][0], 60, "a delivery")
        yield d


def table_rows(text: str, first: str) -> dict[str, list[str]]:
    """Rows of the rich table whose title starts with ``first``: first cell -> the other cells."""
    found: dict[str, list[str]] = {}
    inside = False
    for line in text.splitlines():
        if line.startswith(first):
            inside = True
        elif inside and line and not line.startswith(("┏", "┃", "┡", "│", "└")):
            break
        elif inside and line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            found[cells[0]] = cells[1:]
    return found


def number(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_once_prints_one_frame_with_what_the_database_holds(observed: Deployment) -> None:
    """--once: per-kind counts, quarantine per class, firing alerts, sinks and session, equal to the database."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "top", "--database", str(observed.db), "--once", "--minutes", "10"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "\x1b[" not in text  # not a terminal: plain text for scripts
    assert re.search(r"session connected .* ping [\d.]+ ms .* writer backlog \d+", text), text[:500]

    events = table_rows(text, "Events")
    held = observed.held()
    for kind in (*HISTORY_KINDS, "api"):
        assert number(events[kind][1]) == held[kind], (kind, events[kind])
        assert float(events[kind][0]) > 0  # the wave arrived within the last minute
    assert {"device", "tag", "token", "push"} <= set(events)

    quarantine = table_rows(text, "Quarantine")
    expected: dict[str, int] = {}
    for (reason,) in rows(observed.db, "SELECT reason FROM quarantine"):
        expected[reason_class(reason)] = expected.get(reason_class(reason), 0) + 1
    assert {name: number(cells[0]) for name, cells in quarantine.items()} == expected

    firing = rows(observed.db, "SELECT count(*) FROM alerts WHERE state = 'firing'")[0][0]
    assert f"Firing alerts ({firing})" in text and firing > 0
    assert "critical" in table_rows(text, "Firing alerts")

    sinks = table_rows(text, "Sinks")
    assert set(sinks) == {"hook", "broken"} and sinks["hook"][2].endswith("ago")


def test_a_missing_database_is_one_line(tmp_path: Path) -> None:
    """Pointed at no database, top says so in one line and exits 1."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "top", "--database", str(tmp_path / "none.db"), "--once"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "does not exist" in done.stderr


class Tmux:
    """A private tmux server (its own socket), killed at the end.

    Its environment is a terminal's, not pytest's: COLUMNS or LINES inherited from the caller
    would override the pane's size for the program inside.
    """

    def __init__(self, tmux: str, socket: Path) -> None:
        self.base = [tmux, "-S", str(socket)]
        self.env = {"TERM": "xterm-256color", "PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(socket.parent)}

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=30, env=self.env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")

    def pane(self, fmt: str) -> str:
        return self("display-message", "-p", "-t", "top", fmt).strip()


def test_live_view_in_tmux_follows_the_agent_and_quits_on_q(observed: Deployment, tmp_path: Path) -> None:
    """In a real terminal the view fills the screen, refreshes as a new wave lands, and `q` ends it with exit 0."""
    tmux = Tmux(require("tmux", "tmux"), tmp_path / "tmux.sock")
    # The shell writes top's exit status to a file: tmux's own pane_dead_status was found empty for a
    # pane that had exited (twice in CI runs), so the test does not depend on tmux reaping it.
    rc = tmp_path / "rc"
    command = f"{sys.executable} -m agent top --database {observed.db} --interval 0.5 --minutes 10; echo $? > {rc}"
    try:
        tmux("-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", "150", "-y", "80", command)
        tmux("set-option", "-t", "top", "remain-on-exit", "on")
        try:
            first = poll_until(lambda: "Sinks" in (s := tmux.screen()) and s, 60, "the first frame")
        except AssertionError:
            raise AssertionError(f"no first frame; the pane shows:\n{tmux.screen()}") from None
        assert "session connected" in first and "Firing alerts" in first
        before = number(table_rows(first, "Events")["api"][1])
        assert before == observed.held()["api"]

        observed.wave(300, seed=42)
        after = observed.held()["api"]
        assert after > before
        poll_until(lambda: number(table_rows(tmux.screen(), "Events")["api"][1]) == after, 30, "the view to refresh")

        tmux("send-keys", "-t", "top", "q")
        ended = poll_until(lambda: rc.exists() and rc.read_text().strip(), 30, "top to exit on q")
        assert ended == "0", f"top exited with status {ended}"
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True, timeout=30)
