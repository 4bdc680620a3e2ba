"""The slixmpp client set up for the Monitor API: STARTTLS only, verified, no plaintext."""

from __future__ import annotations

from slixmpp import ClientXMPP

from agent.config import Settings


class MonitorClient(ClientXMPP):
    """A slixmpp client for the Monitor API; the session (``agent.session.connection``) drives it."""

    def __init__(self, settings: Settings) -> None:
        xmpp = settings.xmpp
        jid = xmpp.jid if "/" in xmpp.jid else f"{xmpp.jid}/{xmpp.resource}"
        super().__init__(jid, xmpp.password.get_secret_value())
        # STARTTLS on the c2s port; without this slixmpp first tries direct TLS on it and logs a
        # spurious failure. Plaintext is refused: the password and API keys must not leak.
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        if xmpp.ca_file is not None:
            self.ca_certs = xmpp.ca_file
        # We ping with XEP-0199 ourselves; whitespace would only hide a dead peer.
        self.whitespace_keepalive = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199", {"keepalive": False})
        self.register_plugin("xep_0198", {"window": 5, "allow_resume": True})
