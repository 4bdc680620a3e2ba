"""``xmppmon browse``: Datasette over the database, read-only, with the shipped metadata and canned queries.

Datasette (the ``xmppmon[browse]`` extra) opens a file it is not told is immutable with ``mode=ro``
URIs: reads only, no lock that could hold up the agent's writer, and the data stays live. It runs
in this process (uvicorn), so SIGTERM and Ctrl-C stop it cleanly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import socket
import sys
from pathlib import Path

from agent.exceptions import StoreError, XmppmonError
from agent.store.canned import metadata


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as exc:
            raise XmppmonError(f"cannot listen on {host}:{port} for browse: {exc.strerror or exc}") from None


def run_browse(path: Path, host: str, port: int) -> int:
    if importlib.util.find_spec("datasette") is None:
        raise XmppmonError("xmppmon browse needs Datasette: pip install 'xmppmon[browse]'")
    if not path.is_file():
        raise StoreError(f"database {path} does not exist: has the agent run with this path?")
    _check_port(host, port)
    import uvicorn
    from datasette.app import Datasette  # type: ignore[import-untyped]

    datasette = Datasette(
        [str(path)], metadata=metadata(path.stem), settings={"sql_time_limit_ms": 5000, "allow_download": False}
    )
    shown = f"[{host}]" if ":" in host else host
    print(f"xmppmon browse: http://{shown}:{port}/{path.stem} (read-only; Ctrl-C to stop)", flush=True)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again: let that end
    # the command with 0, as a stop it was asked for.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(datasette.app(), host=host, port=port, log_level="warning")
    return 0
