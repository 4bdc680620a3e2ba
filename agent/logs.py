"""Logging: loguru to stderr (journald adds the time and unit), stdlib logging routed into it.

Only the entry point calls :func:`setup_logging`. The default line is short: level, component,
message. ``log.json`` writes one JSON object per line with the bound fields instead.
"""

from __future__ import annotations

import inspect
import logging
import sys
from typing import TextIO

from loguru import logger

from agent.config import LogSettings

_FORMAT = "{level: <7} {extra[component]}: {message}"
_FORMAT_WITH_TIME = "{time:YYYY-MM-DD HH:mm:ss.SSS} " + _FORMAT


class InterceptHandler(logging.Handler):
    """Send stdlib records (slixmpp, aiosqlite) to loguru, keeping their level and origin."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = inspect.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.bind(component=record.name).opt(depth=depth, exception=record.exc_info).log(
            level, record.getMessage()
        )


def setup_logging(settings: LogSettings, stream: TextIO | None = None) -> None:
    """Configure loguru's single sink and route the standard library's logging into it."""
    logger.remove()
    logger.configure(extra={"component": "xmppmon"})
    # Under systemd, journald stamps each line; on a terminal, a time helps the reader.
    out = stream or sys.stderr
    timed = out.isatty() if hasattr(out, "isatty") else False
    logger.add(
        out,
        level=settings.level,
        format=_FORMAT_WITH_TIME if timed else _FORMAT,
        serialize=settings.json_lines,
        backtrace=False,
        diagnose=False,  # variable values in tracebacks could include secrets
        colorize=False,
    )
    stdlib_level = logging.DEBUG if settings.level in ("TRACE", "DEBUG") else logging.WARNING
    logging.basicConfig(handlers=[InterceptHandler()], level=stdlib_level, force=True)
    # slixmpp logs routine reconnection noise at ERROR/WARNING that the session reports better.
    for name in ("slixmpp.xmlstream.xmlstream", "slixmpp.features.feature_starttls.starttls"):
        logging.getLogger(name).setLevel(logging.CRITICAL if stdlib_level > logging.DEBUG else logging.DEBUG)
