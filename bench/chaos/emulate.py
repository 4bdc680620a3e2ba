"""The soak's emulator process: ``xmppmon emulate`` itself, plus a record of everything it sent.

Usage: ``python -m bench.chaos.emulate --record FILE [xmppmon emulate options]``

The emulator's own ``--event-log`` gives the id, kind and app of each valid event. The soak needs
more to check its invariants: the time of each event (state tables keep the newest value per key),
the payload of each state event, and each malformed event (quarantine must hold one row per
malformed event). This wrapper runs the real emulator (``agent.emulator.run`` with the options of
its own argument parser) with an event factory that remembers what it made, and writes one JSON
line per event to ``FILE`` once the stanza carrying it was handed to the transport, flushed per
stanza. It also stops cleanly on SIGTERM (the stream ends, owed duplicates are sent, the transport is
drained), which ``xmppmon emulate`` does not: there SIGTERM kills the process with events still in
its buffers. And before it closes its stream it makes a round trip through the server (a ping to
the server's domain, answered only once every stanza sent before it was processed, that is routed
and archived): the emulator's own close waits at most 10 s for the server, and a server busy
longer than that (a large archive query blocks Prosody) would otherwise drop the tail of the
stream with the connection, events the record says were sent.

Record lines: ``{"t": "V", "id", "kind", "app", "ts", "p"?}`` for a valid event (``p``, the payload
text, for state kinds only) and ``{"t": "M", "id", "defect", "app", "ts", "text"}`` for a
malformed one (``id`` is the id the factory gave it, absent from the wire for the missing-id and
empty-id defects; ``text`` is the element's text).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO
from xml.etree import ElementTree as ET

import orjson
from slixmpp.exceptions import IqError, IqTimeout

from agent import emulator
from agent.emulator_data import STATE_KINDS, EventFactory


def element_text(xml: str) -> str:
    """The character data of one ``<event …>text</event>`` as the emulator wrote it, unescaped."""
    start = xml.index(">") + 1
    end = xml.rindex("</event>")
    return html.unescape(xml[start:end])


class RecordingFactory(EventFactory):
    """The emulator's factory, keeping a record of each event it made until the stanza is sent."""

    def __init__(self, options: emulator.EmulatorOptions) -> None:
        super().__init__(options)
        self.records: list[bytes] = []

    def valid(self, app: str, ts: str) -> tuple[str, str, str]:
        eid, kind, xml = super().valid(app, ts)
        record: dict[str, Any] = {"t": "V", "id": eid, "kind": kind, "app": app, "ts": ts}
        if kind in STATE_KINDS:
            record["p"] = element_text(xml)
        self.records.append(orjson.dumps(record))
        return eid, kind, xml

    def malformed(self, app: str, ts: str, allow_oversize: bool = True) -> tuple[str, str]:
        defect, xml = super().malformed(app, ts, allow_oversize)
        eid = f"bad-{self._tag}-{self._malformed_n}"
        record = {"t": "M", "id": eid, "defect": defect, "app": app, "ts": ts, "text": element_text(xml)}
        self.records.append(orjson.dumps(record))
        return defect, xml


FLUSH_TIMEOUT = 150.0  # seconds the server may take to process what was sent before the ping


def install(record: TextIO, server_domain: str) -> None:
    """Make the emulator use the recording factory, write its records after each send, and flush
    through the server before closing."""
    emulator.EventFactory = RecordingFactory  # type: ignore[misc]
    original = emulator._Streamer.send

    def send(self: Any, jids: list[str], events: str, lines: list[str]) -> None:
        original(self, jids, events, lines)  # raises (and records nothing) if the connection is gone
        factory = self.factory
        if factory.records:
            record.write(b"\n".join(factory.records).decode() + "\n")
            record.flush()
            factory.records.clear()

    emulator._Streamer.send = send  # type: ignore[method-assign]
    original_drain = emulator._drain

    async def drain(xmpp: Any, timeout: float = 60.0) -> None:
        await original_drain(xmpp, timeout)
        started = time.monotonic()
        iq = xmpp.Iq()
        iq["type"], iq["to"], iq["from"] = "get", server_domain, xmpp.boundjid.full
        iq.append(ET.Element("{urn:xmpp:ping}ping"))
        try:
            await iq.send(timeout=FLUSH_TIMEOUT)
        except IqError:
            pass  # an error answer is a round trip too
        except IqTimeout:
            print(f"the server did not process the stream within {FLUSH_TIMEOUT:.0f} s", file=sys.stderr, flush=True)
            raise
        print(f"flushed through the server in {time.monotonic() - started:.2f} s", file=sys.stderr, flush=True)

    emulator._drain = drain


async def main(options: emulator.EmulatorOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        report = await emulator.run(options, stop)
    except Exception as exc:
        print(f"emulator failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 3
    print(orjson.dumps({k: getattr(report, k) for k in report.__dataclass_fields__}).decode(), flush=True)
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chaos.emulate")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--server-domain", default=None, help="default: the component JID minus its first label")
    emulator.add_arguments(parser)
    args = parser.parse_args(argv)
    options = emulator.options_from_args(args)
    from agent.config import LogSettings
    from agent.logs import setup_logging

    setup_logging(LogSettings(level="INFO"))
    with args.record.open("a", encoding="utf-8") as record:
        install(record, args.server_domain or options.jid.split(".", 1)[-1])
        return asyncio.run(main(options))


if __name__ == "__main__":
    raise SystemExit(cli())
