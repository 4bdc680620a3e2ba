"""Hand-made Monitor API messages from the emulator's component, for what its stream does not make.

The streaming emulator stamps every event with the current time and repeats ids only at random;
tests of retention need events of a chosen age, and one given event sent again. :func:`component`
connects the same XEP-0114 component (answering subscriptions as the emulator does) and
:meth:`Component.send` writes exactly the events a test built with :meth:`Component.event`.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import AsyncIterator

from agent.lab.emulator.component import MonitorComponent, _connect, _drain
from agent.lab.emulator.options import EmulatorOptions, EmulatorReport
from agent.lab.emulator.wire import _dumps, event_xml, make_payload, message_xml, uuid4_text


class Component:
    """A connected Monitor API component that sends what it is given."""

    def __init__(self, xmpp: MonitorComponent, options: EmulatorOptions) -> None:
        self.xmpp, self.options = xmpp, options
        self.rng = random.Random(options.seed)
        self._ids = itertools.count(1)

    def event(self, kind: str, ts: str, app: str = "demo", event_id: str | None = None) -> tuple[str, str]:
        """A valid event of ``kind`` stamped ``ts``, as (id, XML)."""
        eid = event_id or uuid4_text(self.rng)
        payload = _dumps(make_payload(kind, self.rng, self.options.api_status))
        return eid, event_xml(self.options.namespace, {"id": eid, "kind": kind, "app": app, "ts": ts}, payload)

    def send(self, to: str, events: list[str]) -> None:
        """One message holding ``events`` (XML from :meth:`event`) to ``to``."""
        self.xmpp.send_raw(message_xml(self.options.jid, to, f"hand-{next(self._ids)}", events))

    async def flush(self) -> None:
        """Wait until everything sent has been handed to the kernel."""
        await _drain(self.xmpp)


@contextlib.asynccontextmanager
async def component(options: EmulatorOptions) -> AsyncIterator[Component]:
    """Connect the component for the block; disconnect it after."""
    xmpp = MonitorComponent(options, EmulatorReport())
    await _connect(xmpp, options)
    try:
        yield Component(xmpp, options)
    finally:
        if xmpp.transport is not None:
            with contextlib.suppress(Exception):
                await _drain(xmpp)
                await xmpp.disconnect(wait=5.0)
        if xmpp.transport is not None:
            xmpp.abort()
