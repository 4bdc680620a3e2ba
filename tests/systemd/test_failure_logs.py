"""A failure the systemd helpers survive is logged with its reason, once per repeat window, never swallowed
(issue 10, defect 10)."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from agent.config import LogSettings, StoreSettings
from agent.logs import setup_logging
from agent.store import Store
from agent.systemd import watchdog


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put loguru and the stdlib root logger back as they were for the other tests."""
    yield
    logger.remove()
    logger.configure(patcher=lambda record: None, extra={})
    logger.add(sys.stderr)
    logging.basicConfig(handlers=[], force=True)


async def test_unreadable_session_state_is_logged_once_with_its_reason(tmp_path: Path, restore_logging: None) -> None:
    """The READY check cannot read the session state (the store is closed): one warning naming why, not five, and
    the check still answers (empty state) instead of failing."""
    store = await Store.open(StoreSettings(path=tmp_path / "m.db"))
    await store.close()
    out = io.StringIO()
    setup_logging(LogSettings(), stream=out)
    answers = [await watchdog._session_state(store) for _ in range(5)]
    assert answers == [""] * 5
    lines = [line for line in out.getvalue().splitlines() if "session state" in line]
    assert len(lines) == 1, out.getvalue()
    assert lines[0].startswith("WARNING systemd:") and "StoreClosedError: the store is closed" in lines[0]
