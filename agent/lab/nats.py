"""Private ``nats-server -js`` nodes on 127.0.0.1 for tests and benchmarks: one node, or a cluster of three.

Each node has its own folder (configuration, JetStream store, log) and keeps its ports across
restarts, so a test can kill one node and start it again on the same data. Like
``agent.lab.prosody``, this is library code shared by fixtures and benchmarks; it imports no pytest.

Typical use::

    with NatsCluster(tmp_path, size=3) as cluster:
        urls = cluster.urls          # nats://127.0.0.1:PORT, one per node
        cluster.nodes[1].kill()      # crash one node
        cluster.nodes[1].start()     # and bring it back on the same store
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from agent.exceptions import LabError
from agent.lab.net import free_loopback_port, tail
from agent.lab.process import ServerProcess, StartStop

NATS_SERVER = "nats-server"


class NatsError(LabError):
    """A private nats-server did not start or stop as expected."""


def nats_available() -> bool:
    """Whether Debian's ``nats-server`` binary is on the PATH."""
    return shutil.which(NATS_SERVER) is not None


@dataclass
class NatsNode(ServerProcess):
    """One ``nats-server`` with JetStream, rooted at :attr:`workdir`; ports picked on first start."""

    label = "nats-server"
    error = NatsError

    workdir: Path
    name: str = "n1"
    #: Largest message the server accepts, headers included (its default is 1 MiB).
    max_payload: int | None = None
    #: ``authorization { token: ... }`` when set.
    token: str | None = None
    #: (certificate, key) for TLS on the client port.
    tls: tuple[Path, Path] | None = None
    cluster_name: str | None = None
    routes: list[int] = field(default_factory=list)
    #: More configuration lines, e.g. ``agent.lab.nats_auth.Operator.config()`` for decentralised auth.
    extra: str = ""

    port: int = field(default=0, init=False)
    http_port: int = field(default=0, init=False)
    cluster_port: int = field(default=0, init=False)
    pid: int | None = field(default=None, init=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _frozen: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls else "nats"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats.log"

    def pick_ports(self) -> None:
        """Choose the node's free loopback ports once (a cluster needs them before any node starts)."""
        taken: set[int] = set()
        for attr in ("port", "http_port", "cluster_port"):
            while not getattr(self, attr) or getattr(self, attr) in taken:
                setattr(self, attr, free_loopback_port())
            taken.add(getattr(self, attr))

    def config(self) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
            f"jetstream {{ store_dir: {json.dumps(str(self.workdir / 'js'))}, max_mem: 64MB, max_file: 2GB }}",
        ]
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        if self.token is not None:
            lines.append(f"authorization {{ token: {json.dumps(self.token)} }}")
        if self.tls is not None:
            cert, key = self.tls
            lines.append(f"tls {{ cert_file: {json.dumps(str(cert))}, key_file: {json.dumps(str(key))} }}")
        if self.cluster_name is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes if p != self.cluster_port)
            lines.append(
                f"cluster {{ name: {self.cluster_name}, listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n" + self.extra

    def start(self, timeout: float = 30.0, wait: bool = True) -> None:
        """Launch the node; with ``wait``, block until its monitoring port says it is healthy."""
        if self.running:
            raise NatsError(f"nats-server {self.name} is already running (pid {self.pid})")
        self._reap()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pick_ports()
        conf = self.workdir / "nats.conf"
        conf.write_text(self.config(), encoding="utf-8")
        self._spawn([NATS_SERVER, "-c", str(conf)], self.log_path, self.workdir, {"PATH": "/usr/sbin:/usr/bin:/bin"})
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until ``/healthz`` answers ok (JetStream up and, in a cluster, current)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            proc = self._process
            if proc is None or proc.poll() is not None:
                raise NatsError(f"nats-server {self.name} exited during start-up:\n{tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2) as answer:
                    if json.loads(answer.read()).get("status") == "ok":
                        return
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")
            except (OSError, ValueError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                self.stop()
                raise NatsError(
                    f"nats-server {self.name} not healthy after {timeout:.0f} s ({last}):\n{tail(self.log_path)}"
                )
            time.sleep(0.1)


@dataclass
class NatsCluster(StartStop):
    """``size`` JetStream nodes routed to each other on loopback (``size=1``: a plain single node)."""

    workdir: Path
    size: int = 3
    max_payload: int | None = None
    token: str | None = None
    tls: tuple[Path, Path] | None = None
    extra: str = ""
    nodes: list[NatsNode] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        clustered = self.size > 1
        for i in range(self.size):
            node = NatsNode(
                Path(self.workdir) / f"n{i + 1}", name=f"n{i + 1}", max_payload=self.max_payload,
                token=self.token, tls=self.tls, cluster_name="xmppmon-lab" if clustered else None, extra=self.extra,
            )  # fmt: skip
            node.pick_ports()
            self.nodes.append(node)
        if clustered:
            for node in self.nodes:
                node.routes = [n.cluster_port for n in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 60.0) -> None:
        """Start every node, then wait until all of them are healthy (the meta leader is elected)."""
        try:
            for node in self.nodes:
                node.start(wait=False)
            for node in self.nodes:
                node.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
