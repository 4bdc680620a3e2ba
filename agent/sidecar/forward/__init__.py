"""Forwarding to NATS JetStream (``XMPPMON_FORWARD__…``): every committed record, exactly once, in the sidecar.

::

    forwarder.py  the rounds: reconcile with the stream, publish, save the cursor; lag and its alert
    window.py     publishes in flight and their acknowledgements (bounded, ack-chained)
    stream.py     connecting (credentials, TLS), the stream (created or checked), its last message
    records.py    a record on the wire: subject, Nats-Msg-Id, JSON body, headers (pure)

Its SQL (the change log, the cursor, dead letters, status) is ``agent.store.changes``; docs/scale.md
explains the design and its limits.
"""

from agent.sidecar.forward.forwarder import Forwarder

__all__ = ["Forwarder"]
