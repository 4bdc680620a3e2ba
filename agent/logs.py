"""Logging: loguru to stderr (journald adds the time and unit), stdlib logging routed into it.

Only the entry point calls :func:`setup_logging`. The default line is short: level, component,
message, then the bound fields (``app=… event_id=…``). ``log.json`` writes one JSON object per line
with the same fields instead. Two filters sit in front of the sink:

* repeats: the same warning or error (level, component, message) is written once per
  ``window`` seconds; the next one written after the window says "(suppressed N similar …)";
* secrets: every configured password, key and token, and the payload of SASL ``<auth>``,
  ``<response>`` and ``<challenge>`` elements (slixmpp logs them at DEBUG), become ``***``
  in the final text, tracebacks included.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import orjson
from loguru import logger

from agent.config import LogSettings
from agent.journal import JournalWriter

_FORMAT = "{level: <7} {extra[component]}: {message}{extra[_fields]}"
_FORMAT_WITH_TIME = "{time:YYYY-MM-DD HH:mm:ss.SSS} " + _FORMAT
#: Bound fields shown on the short line, in this order (any other bound field is JSON-only).
FIELDS = ("app", "event_id", "stanza_id", "client_request_id", "sink", "job")
_SASL = re.compile(r"(<(auth|response|challenge|success)\b[^>]*>)[^<]+(</\2>)")
#: Shorter values are not redacted: replacing every "ab" in the logs would hide more than it saves.
MIN_SECRET = 4


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
        logger.bind(component=record.name).opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


class RepeatFilter:
    """Let an identical warning or error through once per ``window`` seconds, counting the rest."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}

    def __call__(self, record: Any) -> bool:
        if record["level"].no < logging.WARNING:
            return True
        key = (record["level"].name, str(record["extra"].get("component")), record["message"])
        now = self.clock()
        first, suppressed = self._seen.get(key, (None, 0))
        if first is not None and now - first < self.window:
            self._seen[key] = (first, suppressed + 1)
            return False
        if suppressed and first is not None:
            record["message"] += f" (suppressed {suppressed} similar in the last {now - first:.0f} s)"
        if len(self._seen) > 1000:  # forget old keys; a bounded filter cannot leak memory
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        self._seen[key] = (now, 0)
        return True


class Redactor:
    """Replace known secret values (and SASL payloads) with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s for s in secrets if s and len(s) >= MIN_SECRET}
        # Longest first, so a secret containing another is hidden whole.
        self.pattern = re.compile("|".join(map(re.escape, sorted(values, key=len, reverse=True)))) if values else None

    def __call__(self, text: str) -> str:
        text = _SASL.sub(r"\1***\3", text)
        return self.pattern.sub("***", text) if self.pattern else text


def _patch(record: Any) -> None:
    extra = record["extra"]
    extra.setdefault("component", "xmppmon")
    shown = [f"{k}={extra[k]}" for k in FIELDS if extra.get(k) is not None]
    extra["_fields"] = (" [" + " ".join(shown) + "]") if shown else ""


def json_line(record: Any) -> str:
    """One JSON object: level, component, message, the bound fields, and the exception if any."""
    obj: dict[str, Any] = {
        "ts": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "component": record["extra"].get("component", "xmppmon"),
        "message": record["message"],
    }
    obj.update((k, v) for k, v in record["extra"].items() if not k.startswith("_") and k != "component")
    if record["exception"] is not None:
        exc = record["exception"]
        obj["exception"] = f"{exc.type.__name__ if exc.type else 'Exception'}: {exc.value}"
    return orjson.dumps(obj, default=str).decode() + "\n"


def setup_logging(
    settings: LogSettings,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
    repeat_window: float = 60.0,
) -> None:
    """Configure loguru's single sink and route the standard library's logging into it."""
    logger.remove()
    logger.configure(extra={"component": "xmppmon"}, patcher=_patch)
    # Under systemd, journald stamps each line; on a terminal, a time helps the reader.
    out = stream or sys.stderr
    timed = out.isatty() if hasattr(out, "isatty") else False
    redact = Redactor(secrets)
    journal = JournalWriter.for_stream(out)  # under systemd: priorities and fields (agent/journal.py)

    def sink(message: Any) -> None:
        text = redact(json_line(message.record) if settings.json_lines else str(message))
        if journal is not None:
            journal.write(message.record, text, redact)
            return
        out.write(text)
        out.flush()

    logger.add(
        sink,
        level=settings.level,
        format=_FORMAT_WITH_TIME if timed else _FORMAT,
        filter=RepeatFilter(repeat_window),
        backtrace=False,
        diagnose=False,  # variable values in tracebacks could include secrets
        colorize=False,
        catch=True,
    )
    stdlib_level = logging.DEBUG if settings.level in ("TRACE", "DEBUG") else logging.WARNING
    logging.basicConfig(handlers=[InterceptHandler()], level=stdlib_level, force=True)
    # slixmpp logs routine reconnection noise at ERROR/WARNING that the session reports better.
    for name in ("slixmpp.xmlstream.xmlstream", "slixmpp.features.feature_starttls.starttls"):
        logging.getLogger(name).setLevel(logging.CRITICAL if stdlib_level > logging.DEBUG else logging.DEBUG)


def secrets_of(settings: Any) -> list[str]:
    """Every ``SecretStr`` value in a settings tree (passwords, API keys, sink tokens)."""
    from pydantic import BaseModel, SecretStr

    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(settings)
    return found
