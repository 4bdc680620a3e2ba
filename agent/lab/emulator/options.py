"""What ``xmppmon emulate`` can be told: the emulator's options, its report, and its command line."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.exceptions import ConfigError
from agent.lab.emulator.wire import CONDITIONS, KINDS, NAMESPACE

MAX_BATCH = 1000  # ~200 B per event keeps a stanza well under Prosody's 512 KiB component limit


@dataclass
class EmulatorOptions:
    """Everything ``xmppmon emulate`` can be told; see ``add_arguments`` for each option's help."""

    secret: str = ""
    jid: str = "monitor.localhost"
    host: str = "127.0.0.1"
    port: int = 5347
    namespace: str = NAMESPACE
    apps: dict[str, str] = field(default_factory=lambda: {"demo": "demo-key"})
    refuse: dict[str, int] = field(default_factory=dict)
    to: list[str] = field(default_factory=list)
    rate: float = 0.0
    batch: int = 1
    count: int = 0
    duration: float = 0.0
    kinds: tuple[str, ...] = KINDS
    malformed: float = 0.0
    duplicates: float = 0.0
    api_status: int | None = None
    event_log: Path | None = None
    seed: int | None = None
    start_delay: float = 0.0
    connect_timeout: float = 15.0
    close_timeout: float = 0.0  # seconds to wait for the server to close its stream; 0: 10 s or 1 s per 50 stanzas

    def __repr__(self) -> str:  # keeps the secret and the API keys out of logs and tracebacks
        return f"EmulatorOptions(jid={self.jid!r}, apps={sorted(self.apps)!r}, to={self.to!r})"


@dataclass
class EmulatorReport:
    """What one run sent and answered; ``elapsed`` runs from the handshake to the last byte
    handed to the kernel (before the stream is closed)."""

    events_sent: int = 0
    duplicates_sent: int = 0
    malformed_sent: int = 0
    stanzas_sent: int = 0
    subscribes_ok: int = 0
    subscribes_refused: int = 0
    elapsed: float = 0.0
    server_closed: bool = False  # the server closed its stream after ours: it read everything sent


# --- command line ---------------------------------------------------------------------------


def _app_key(text: str) -> tuple[str, str]:
    name, sep, key = text.partition(":")
    if not (name and sep and key):
        raise argparse.ArgumentTypeError(f"expected NAME:KEY, got {text.split(':')[0]!r}:…")
    return name, key


def _refusal(text: str) -> tuple[str, int]:
    app, sep, code = text.rpartition("=")
    if not (app and sep and code.isdigit() and int(code) in CONDITIONS):
        codes = ", ".join(map(str, CONDITIONS))
        raise argparse.ArgumentTypeError(f"expected APP=CODE with CODE one of {codes}: {text!r}")
    return app, int(code)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text}")
    return value


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {', '.join(sorted(unknown)) or '(none given)'}; known: {', '.join(KINDS)}"
        )
    return kinds


def _batch(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"expected 1..{MAX_BATCH} events per stanza, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to the ``emulate`` sub-parser."""
    d = EmulatorOptions()
    a = parser.add_argument
    a("--jid", default=d.jid, help="component JID (default %(default)s)")
    a(
        "--secret",
        default=None,
        help="component secret (default: $XMPPMON_EMULATOR_SECRET); prefer the variable, "
        "command lines are visible to every user",
    )
    a("--host", default=d.host, help="XMPP server address (default %(default)s)")
    a("--port", type=int, default=d.port, help="server's component port (default %(default)s)")
    a("--namespace", default=d.namespace, help="Monitor API namespace (default %(default)s)")
    a(
        "--app",
        dest="apps",
        action="append",
        type=_app_key,
        metavar="NAME:KEY",
        help="an application and its API key, repeatable (default demo:demo-key)",
    )
    a(
        "--refuse",
        action="append",
        type=_refusal,
        default=[],
        metavar="APP=CODE",
        help="answer this app's subscribe with the XMPP error for CODE, repeatable",
    )
    a(
        "--to",
        action="append",
        default=[],
        metavar="JID",
        help="stream to this JID from the start, without waiting for a subscribe; repeatable",
    )
    a("--rate", type=float, default=d.rate, help="events per second, 0 = as fast as possible")
    a("--batch", type=_batch, default=d.batch, help="events per stanza (default %(default)s)")
    a("--count", type=int, default=d.count, help="valid events to send, 0 = unlimited")
    a("--duration", type=float, default=d.duration, help="seconds to run, 0 = unlimited")
    a("--kinds", type=_kinds, default=d.kinds, help=f"comma list (default {','.join(KINDS)})")
    a(
        "--malformed",
        type=_fraction,
        default=d.malformed,
        help="malformed events added per valid event, 0..1",
    )
    a(
        "--duplicates",
        type=_fraction,
        default=d.duplicates,
        help="fraction of valid events sent again in a later stanza, 0..1",
    )
    a(
        "--api-status",
        type=int,
        default=None,
        metavar="CODE",
        help="force the status of every api event (default: a realistic mix)",
    )
    a(
        "--event-log",
        type=Path,
        default=None,
        metavar="FILE",
        help="append '<id>\\t<kind>\\t<app>' per valid event sent, in send order",
    )
    a("--seed", type=int, default=None, help="seed for reproducible events")
    a(
        "--start-delay",
        type=float,
        default=d.start_delay,
        help="seconds between a subscriber appearing and its first event",
    )


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    """Build the options from parsed arguments; a missing secret is a ConfigError."""
    secret = args.secret or os.environ.get("XMPPMON_EMULATOR_SECRET", "")
    if not secret:
        raise ConfigError("The emulator needs the component secret: set XMPPMON_EMULATOR_SECRET or pass --secret.")
    return EmulatorOptions(
        secret=secret,
        jid=args.jid,
        host=args.host,
        port=args.port,
        namespace=args.namespace,
        apps=dict(args.apps) if args.apps else {"demo": "demo-key"},
        refuse=dict(args.refuse),
        to=list(args.to),
        rate=args.rate,
        batch=args.batch,
        count=args.count,
        duration=args.duration,
        kinds=args.kinds,
        malformed=args.malformed,
        duplicates=args.duplicates,
        api_status=args.api_status,
        event_log=args.event_log,
        seed=args.seed,
        start_delay=args.start_delay,
    )
