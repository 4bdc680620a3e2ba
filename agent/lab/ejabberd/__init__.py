"""A private ejabberd for the test suite: the second real server (issue 10).

``server`` (the lifecycle), ``config`` (what the server is told), ``node`` (the private Erlang
node and admin calls), ``storage`` (its SQLite database), ``vm`` (its processes in /proc),
``installed`` (Debian's package).
"""

from agent.lab.ejabberd.installed import EjabberdError, ejabberd_available, ejabberd_version
from agent.lab.ejabberd.server import EjabberdServer

__all__ = ["EjabberdError", "EjabberdServer", "ejabberd_available", "ejabberd_version"]
