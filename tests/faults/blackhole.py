"""A database host that vanishes without a word: a TCP relay in front of PostgreSQL whose
path can be cut with the kernel's packet filter.

A stopped PostgreSQL closes its connections, and the service hears of it at once. A host
that goes away (a failover to another machine, a partition, a NAT or load balancer that
forgets its connections) sends nothing at all: a query on its way waits for an answer
that never comes, and only TCP itself can notice, by probes that go unanswered. Packets
to and from the relay's port are dropped while it is cut (iptables), every session
through it ends on the database's side, and its sockets stay silent for good; the
connections that come after the cut reach the database again.

Needs root and `iptables` (.ci/run installs it); `available()` says why not otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

CHUNK = 65536
# Every rule a cut adds carries this comment, so that one a killed run left behind is found
# and taken away by the next cut.
TAG = "webhook-tests-blackhole"


def available() -> str | None:
    """None if a relay can be cut here, else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "cutting a connection's path needs root (iptables)"
    if shutil.which("iptables") is None:
        return "iptables is not installed (.ci/run installs it)"
    # The kind of rule a cut adds, on a port nothing listens on, added and taken away.
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", "9", "-m", "comment", "--comment", TAG]
    rule += ["-j", "DROP"]
    added = subprocess.run(["iptables", "-I", *rule], capture_output=True, text=True)
    if added.returncode != 0:
        return f"iptables does not work here: {added.stderr.strip() or added.returncode}"
    subprocess.run(["iptables", "-D", *rule], check=True)
    return None


class Relay:
    """127.0.0.1:port -> PostgreSQL at `upstream` (a Unix socket path or a (host, port))."""

    def __init__(self, upstream: str | tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._muted: list[socket.socket] = []  # clients of a vanished host: open, silent
        self._closed = False
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = self._connect_upstream()
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:  # accepted while the relay was closing
                    client.close()
                    server.close()
                    return
                self._pairs.append((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        family = socket.AF_UNIX if isinstance(self._upstream, str) else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        try:
            server.connect(self._upstream)
        except OSError:
            server.close()
            raise
        return server

    @contextlib.contextmanager
    def vanished(self) -> Iterator[None]:
        """The host is gone for the duration: nothing reaches the relay's port or leaves it,
        and the sessions through it are over. Afterwards new connections work again, while
        the old ones stay as a vanished host leaves them: open on the client's side, and
        never answered."""
        _sweep()
        tagged = ["-m", "comment", "--comment", TAG, "-j", "DROP"]
        rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(self.port), *tagged],
            ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(self.port), *tagged],
        ]
        try:
            for rule in rules:
                subprocess.run(["iptables", "-I", *rule], check=True)
            with self._lock:
                pairs, self._pairs = self._pairs, []
            for client, server in pairs:
                # The database ends the session; the client's socket is kept open and never
                # written to again (closing it would send a FIN once the path is back).
                self._muted.append(client)
                with contextlib.suppress(OSError):
                    server.shutdown(socket.SHUT_RDWR)
                server.close()
            yield
        finally:
            _sweep()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pairs, self._pairs = self._pairs, []
        self._listener.close()
        for client, server in pairs:
            client.close()
            server.close()
        for client in self._muted:
            client.close()


def _sweep() -> None:
    """Take away every rule a cut added (this one's, or one a killed run left behind)."""
    listed = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        if TAG in line and line.startswith("-A "):
            subprocess.run(["iptables", "-D", *shlex.split(line)[1:]], check=False)


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy one direction until either side ends; a muted client is left alone."""
    try:
        while data := source.recv(CHUNK):
            target.sendall(data)
    except OSError:
        pass
