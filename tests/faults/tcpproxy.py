"""A TCP forwarder in front of a server we may not stop (the machine's RabbitMQ).

Clients connect to the proxy's port; it forwards bytes both ways. :meth:`down` closes the
listening socket and every connection (the broker "crashed": connections reset, new ones
refused); :meth:`up` listens again on the same port. :meth:`blackhole` keeps connections
open but stops forwarding (the broker hangs, like a SIGSTOPped process); :meth:`up` ends it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading

__all__ = ["TcpProxy"]

_RESET = struct.pack("ii", 1, 0)


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``target`` (host, port) in a background thread."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._forwarding = True
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._listen()
        self._thread.start()
        return self

    def url(self, template: str) -> str:
        """``template`` with ``{port}`` replaced by the proxy's port."""
        return template.format(port=self.port)

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        with self._lock:
            self._listener = sock

    def down(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
        if listener is not None:
            listener.close()
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    # linger 0: the peer sees a reset, as when the broker's process dies
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                    s.close()

    def blackhole(self) -> None:
        """Keep accepting and holding connections, but forward nothing."""
        self._forwarding = False

    def up(self) -> None:
        """Forward again (after :meth:`blackhole`), listening again if :meth:`down`."""
        self._forwarding = True
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self._stopped.set()
        self.down()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                listener = self._listener
                pairs = list(self._pairs)
            watch: list[socket.socket] = (
                [s for pair in pairs for s in pair] if self._forwarding else []
            )
            if listener is not None:
                watch.append(listener)
            if not watch:
                self._stopped.wait(0.02)
                continue
            try:
                readable, _, _ = select.select(watch, [], [], 0.05)
            except (OSError, ValueError):
                continue  # a socket was closed meanwhile
            for sock in readable:
                if sock is listener:
                    self._accept(listener)
                elif self._forwarding:
                    self._pump(sock, pairs)

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2.0)
        except OSError:
            client.close()
            return
        client.setblocking(True)
        upstream.setblocking(True)
        with self._lock:
            self._pairs.append((client, upstream))

    def _pump(self, sock: socket.socket, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
        for a, b in pairs:
            if sock is a or sock is b:
                other = b if sock is a else a
                try:
                    data = sock.recv(65536)
                    if data:
                        other.sendall(data)
                        return
                except OSError:
                    pass
                self._drop(a, b)
                return

    def _drop(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._pairs.remove((a, b))
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()
