"""xmppmon: keeps a Monitor API session alive over XMPP and persists its event stream to SQLite."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xmppmon")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
