"""The soak's emulator process: ``xmppmon emulate`` itself, plus a record of everything it sent.

Usage: ``python -m bench.chaos.emulate --record FILE [xmppmon emulate options]``

The emulator's own ``--event-log`` gives the id, kind and app of each valid event. The soak needs
more to check its invariants: the time of each event (state tables keep the newest value per key),
the payload of each state event, and each malformed event (quarantine must hold one row per
malformed event). This wrapper runs the real emulator (``agent.lab.emulator.run`` with the options
of its own argument parser) with an event factory that remembers what it made (its public
``factory`` hook), and writes one JSON line per event to ``FILE`` once the stanza carrying it was
handed to the transport (the factory's ``sent`` hook), flushed per stanza. It also stops cleanly on
SIGTERM (the stream ends, owed duplicates are sent, the transport is drained), which ``xmppmon
emulate`` does not: there SIGTERM kills the process with events still in its buffers.

Before it leaves, the emulator waits for the server to close its stream, which the server does only
after processing everything sent before our footer (routed and archived). Its default wait (10 s or
1 s per 50 stanzas) is short for a server that is frozen or busy with a large archive query, so the
wrapper waits up to ``CLOSE_TIMEOUT``; if the server still did not close, the record may list
events that never reached it: the wrapper says so and exits 4, which the soak reports.

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
from pathlib import Path
from typing import Any, TextIO

import orjson

from agent.lab import emulator
from agent.lab.emulator.wire import STATE_KINDS, EventFactory

CLOSE_TIMEOUT = 150.0  # seconds the server may take to process what was sent before our footer


def element_text(xml: str) -> str:
    """The character data of one ``<event …>text</event>`` as the emulator wrote it, unescaped."""
    start = xml.index(">") + 1
    end = xml.rindex("</event>")
    return html.unescape(xml[start:end])


class RecordingFactory(EventFactory):
    """The emulator's factory, keeping a record of each event it made until the stanza is sent."""

    def __init__(self, options: emulator.EmulatorOptions, record: TextIO | None = None) -> None:
        super().__init__(options)
        self.records: list[bytes] = []
        self.record = record

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

    def sent(self) -> None:
        """The stanza carrying the events made since the last call went out: write their records."""
        if self.records and self.record is not None:
            self.record.write(b"\n".join(self.records).decode() + "\n")
            self.record.flush()
        self.records.clear()


async def main(options: emulator.EmulatorOptions, record: TextIO) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        report = await emulator.run(options, stop, factory=lambda o: RecordingFactory(o, record))
    except Exception as exc:
        print(f"emulator failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 3
    finally:
        # The stream is over: a later SIGTERM (two overlapping faults both pause the stream) must
        # not kill the process on its way out, once asyncio has put the default action back.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    print(orjson.dumps({k: getattr(report, k) for k in report.__dataclass_fields__}).decode(), flush=True)
    if not report.server_closed:
        print(
            f"the server did not close its stream within {options.close_timeout:.0f} s: the record may list"
            " events that never reached it",
            file=sys.stderr,
            flush=True,
        )
        return 4
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chaos.emulate")
    parser.add_argument("--record", type=Path, required=True)
    emulator.add_arguments(parser)
    args = parser.parse_args(argv)
    options = emulator.options_from_args(args)
    options.close_timeout = CLOSE_TIMEOUT
    from agent.config import LogSettings
    from agent.logs import setup_logging

    setup_logging(LogSettings(level="INFO"))
    with args.record.open("a", encoding="utf-8") as record:
        return asyncio.run(main(options, record))


if __name__ == "__main__":
    raise SystemExit(cli())
