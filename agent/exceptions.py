"""The one error tree of xmppmon.

::

    XmppmonError                 root: anything xmppmon raises on purpose
    ├── ConfigError              a setting is missing or invalid (exit code 2 at start-up)
    ├── StoreError               the database cannot be opened, migrated or written
    │   └── StoreClosedError     the store was used after close()
    ├── SessionError             the XMPP session cannot be established
    │   ├── AuthenticationError  the server refused the credentials (no retry helps)
    │   └── NegotiationTimeout   the server accepted TCP but never finished the stream negotiation
    ├── PluginError              a plugin failed to load
    ├── ExportError              an export could not be created or did not complete
    ├── ForwardError             the NATS cluster cannot take the forwarded records (records wait)
    └── LabError                 test and demo tooling (``agent.lab``): a private server failed

Lower-level errors (sqlite3, slixmpp's IqError/IqTimeout, OSError) are translated into these
where they enter xmppmon, so callers and the CLI only need to know this tree.
"""


class XmppmonError(Exception):
    """Root of every error xmppmon raises on purpose."""


class ConfigError(XmppmonError):
    """A setting is missing or invalid."""


class StoreError(XmppmonError):
    """The database cannot be opened, migrated or written."""


class StoreClosedError(StoreError):
    """The store was used after it was closed."""


class SessionError(XmppmonError):
    """The XMPP session cannot be established."""


class AuthenticationError(SessionError):
    """The server refused the credentials: retrying with the same ones cannot help."""


class NegotiationTimeout(SessionError):
    """The server accepted the TCP connection but did not finish the stream negotiation in time."""


class PluginError(XmppmonError):
    """A plugin failed to load."""


class ExportError(XmppmonError):
    """An export could not be created or did not complete."""


class ForwardError(XmppmonError):
    """The NATS JetStream cluster cannot take the forwarded records now; they wait in SQLite.

    ``refused``: the cluster answered no (credentials, TLS trust, a conflicting stream), which an
    operator must fix; otherwise it could not be reached and retrying may be enough.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class LabError(XmppmonError):
    """Test and demo tooling (``agent.lab``) could not start, stop or administer a private server."""
