"""The cluster side of forwarding: connecting (credentials, TLS), the stream (created or checked), reconciling.

Every failure becomes a :class:`ForwardError` whose text is the one line an operator reads: what
is wrong and which setting to look at. The records wait in SQLite meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.client import JetStreamContext

from agent.config.forward import ForwardSettings
from agent.exceptions import ForwardError
from agent.sidecar.forward.records import MSG_ID, POSITION, Shaper, covers, decode_position
from agent.store.changes import Position

log = logger.bind(component="forward")

#: JetStream's error codes the forwarder tells apart.
WRONG_LAST_SEQUENCE = 10071
MESSAGE_TOO_LARGE = 10054
_CONNECT_DEADLINE = 5.0
#: The first line of a .creds file's JWT block (a token has no such line).
_CREDS_MARK = "-----BEGIN NATS USER JWT-----"


def _describe(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text or (type(exc).__name__ if exc is not None else "no answer")


def connection_problem(last: BaseException | None, urls: list[str]) -> ForwardError:
    """One line for a connection that could not be made, from the last error the client reported."""
    text = _describe(last)
    where = ", ".join(urls)
    if "authorization violation" in text.lower() or "authentication" in text.lower():
        return ForwardError(
            f"the NATS cluster ({where}) refused the credentials ({text}): check "
            "XMPPMON_FORWARD__CREDENTIALS (a .creds file's text or a token, in $CREDENTIALS_DIRECTORY)",
            refused=True,
        )
    if isinstance(last, ssl.SSLCertVerificationError) or "certificate verify failed" in text.lower():
        return ForwardError(
            f"the NATS server's TLS certificate is not trusted ({text}): set XMPPMON_FORWARD__CA_FILE to its CA",
            refused=True,
        )
    if isinstance(last, ssl.SSLError | nats.errors.SecureConnRequiredError | nats.errors.SecureConnWantedError):
        return ForwardError(
            f"TLS with the NATS cluster ({where}) failed ({text}): check tls:// URLs and XMPPMON_FORWARD__CA_FILE",
            refused=True,
        )
    return ForwardError(f"cannot reach the NATS cluster ({where}): {text}")


def client_options(settings: ForwardSettings) -> dict[str, Any]:
    """Credentials and TLS for ``nats.connect``: a .creds text (JWT and seed) or a token; TLS verified."""
    options: dict[str, Any] = {}
    secret = settings.credentials.get_secret_value().strip() if settings.credentials is not None else ""
    if secret:  # an empty credential file (LoadCredential= needs one) means none
        if _CREDS_MARK in secret:
            options["user_credentials"] = RawCredentials(secret + "\n")
        else:
            options["token"] = secret
    if settings.ca_file is not None or any(url.startswith("tls://") for url in settings.nats_urls):
        options["tls"] = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    return options


@contextlib.asynccontextmanager
async def connected(settings: ForwardSettings, name: str) -> AsyncIterator[NATS]:
    """A connection to the cluster that reconnects by itself; ForwardError if none can be made now."""
    last: list[BaseException] = []
    closing = False

    async def on_error(exc: Exception) -> None:
        last[:] = [exc]

    async def on_disconnect() -> None:
        if not closing:
            log.warning("disconnected from the NATS cluster; reconnecting (records wait in the database)")

    async def on_reconnect() -> None:
        log.info("reconnected to the NATS cluster at {}", nc.connected_url.netloc if nc.connected_url else "?")

    nc = NATS()
    options: dict[str, Any] = {
        "servers": settings.nats_urls, "name": name, "error_cb": on_error, "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect, "connect_timeout": 2, "reconnect_time_wait": 0.5,
        "max_reconnect_attempts": -1, "ping_interval": 5, "max_outstanding_pings": 3,
    }  # fmt: skip
    try:
        await asyncio.wait_for(nc.connect(**options, **client_options(settings)), _CONNECT_DEADLINE)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        raise connection_problem(last[0] if last else exc, settings.nats_urls) from None
    try:
        yield nc
    finally:
        closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)


@dataclass(slots=True)
class StreamState:
    """Where the stream stands: its last sequence and, from its last message, the forwarder's position."""

    last_seq: int
    position: Position | None  # None: the stream holds no readable message of ours
    max_size: int  # largest message it takes (headers included)


class Stream:
    """The stream the forwarder publishes to: checked or created, and read back before publishing."""

    def __init__(self, nc: NATS, settings: ForwardSettings, shaper: Shaper) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=max(2.0, settings.ack_timeout))
        self.settings = settings
        self.shaper = shaper
        self.name = settings.stream

    async def ensure(self) -> StreamInfo:
        """The stream's info; created if missing (duplicate_window, replicas); a conflict is a ForwardError."""
        wanted = self.shaper.stream_subjects()
        try:
            info = await self.js.stream_info(self.name)
        except nats.js.errors.NotFoundError:
            return await self._create(wanted)
        except (TimeoutError, nats.errors.Error) as exc:
            raise ForwardError(f"cannot read stream {self.name}: {_describe(exc)}") from None
        self._check(info, wanted)
        return info

    async def _create(self, subjects: list[str]) -> StreamInfo:
        s = self.settings
        config = StreamConfig(
            name=self.name, subjects=subjects, retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD,
            storage=StorageType.FILE, num_replicas=s.replicas, duplicate_window=s.duplicate_window,
            description="xmppmon: every committed record, exactly once (docs/scale.md)",
        )  # fmt: skip
        try:
            info = await self.js.add_stream(config)
        except nats.js.errors.APIError as exc:
            raise ForwardError(
                f"cannot create stream {self.name} (subjects {', '.join(subjects)}, {s.replicas} replica(s),"
                f" duplicate window {s.duplicate_window:g} s): {exc.description} — check XMPPMON_FORWARD__STREAM,"
                " __REPLICAS (at most the cluster's size) and other streams' subjects",
                refused=True,
            ) from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise ForwardError(f"cannot create stream {self.name}: {_describe(exc)}") from None
        log.info(
            "created stream {} for {} ({} replica(s), duplicate window {:g} s)",
            self.name, ", ".join(subjects), s.replicas, s.duplicate_window,
        )  # fmt: skip
        return info

    def _check(self, info: StreamInfo, wanted: list[str]) -> None:
        cfg = info.config
        have = cfg.subjects or []
        missing = [w for w in wanted if not any(covers(h, w) for h in have)]
        if missing:
            raise ForwardError(
                f"stream {self.name} exists with subjects {', '.join(have) or '(none)'}, which do not take"
                f" {', '.join(missing)}: give this agent its own stream (XMPPMON_FORWARD__STREAM) or fix the"
                " stream's subjects",
                refused=True,
            )
        if cfg.no_ack or cfg.sealed:
            what = "no_ack (it never acknowledges)" if cfg.no_ack else "sealed (it takes no new messages)"
            raise ForwardError(
                f"stream {self.name} is {what}: the forwarder needs acknowledgements to lose nothing", refused=True
            )
        s = self.settings
        if cfg.duplicate_window != s.duplicate_window or cfg.num_replicas != s.replicas:
            log.warning(
                "stream {} has duplicate window {:g} s and {} replica(s), not {:g} s and {} as configured;"
                " using it as it is",
                self.name, cfg.duplicate_window or 0, cfg.num_replicas, s.duplicate_window, s.replicas,
            )  # fmt: skip

    async def state(self) -> StreamState:
        """Read the stream's last sequence and its last message's position (before any publishing)."""
        try:
            info = await self.js.stream_info(self.name)
        except (TimeoutError, nats.errors.Error) as exc:
            raise ForwardError(f"cannot read stream {self.name}: {_describe(exc)}") from None
        limits = [self.nc.max_payload]
        if info.config.max_msg_size and info.config.max_msg_size > 0:
            limits.append(info.config.max_msg_size)
        last = info.state.last_seq
        if not info.state.messages or not last:
            return StreamState(last, None, min(limits))
        try:
            msg = await self.js.get_msg(self.name, seq=last)
        except nats.js.errors.NotFoundError:
            return StreamState(last, None, min(limits))
        except (TimeoutError, nats.errors.Error) as exc:
            raise ForwardError(f"cannot read the last message of stream {self.name}: {_describe(exc)}") from None
        headers = msg.headers or {}
        position = decode_position(headers.get(POSITION))
        if position is None or not self.shaper.ours(headers.get(MSG_ID)):
            raise ForwardError(
                f"the last message of stream {self.name} (sequence {last}, subject {msg.subject}) was not"
                f" published by this agent's forwarder ({self.shaper.account}): exactly once needs a stream"
                " of its own per agent (XMPPMON_FORWARD__STREAM)",
                refused=True,
            )
        return StreamState(last, position, min(limits))
