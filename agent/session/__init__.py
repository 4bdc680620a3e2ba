"""The XMPP session to the Monitor API.

``client``     the slixmpp client (STARTTLS only, verified)
``connection`` the loop: connect, negotiation timeout, backoff, up/down, clean shutdown
``keepalive``  XEP-0199 pings that abort a silent connection, keeping it resumable
``acks``       acknowledge after commit (XEP-0198), and backpressure
``subscribe``  subscribe each application after a new session
``catchup``    archive (XEP-0313) catch-up, and what a resumption replayed
"""

from agent.session.client import MonitorClient
from agent.session.connection import MonitorSession
from agent.session.subscribe import SubscribeOutcome

__all__ = ["MonitorClient", "MonitorSession", "SubscribeOutcome"]
