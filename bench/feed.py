"""What the agent-alone benchmarks feed its slixmpp client: a server's stream, as socket reads.

``bench/pipeline.py``, ``memory.py``, ``prune_latency.py``, ``retention_size.py`` and
``wal_tail.py`` run the agent's real client and store in their own process and hand the parser
the bytes a server would send, so no server's speed is measured with the agent's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

#: The stream header a server opens its stream to the agent with.
HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
    b" xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='bench' version='1.0'>"
)
#: About one socket read: stanzas are joined up to this many bytes.
READ_BYTES = 65536


def open_stream(client: Any) -> None:
    """Start the client's parser on a fresh stream, as after a connection."""
    client.init_parser()
    client.data_received(HEADER)


def reads(stanzas: Iterable[bytes]) -> Iterator[bytes]:
    """The encoded stanzas joined into reads of about :data:`READ_BYTES`, as a socket delivers them."""
    buffer: list[bytes] = []
    size = 0
    for data in stanzas:
        buffer.append(data)
        size += len(data)
        if size >= READ_BYTES:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)
