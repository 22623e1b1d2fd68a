"""Threaded TCP lifecycle shared by the simulated instruments (Nanonis, SR830, LakeShore 372).

Contract: a :class:`TcpServerBase` binds ``host:port`` (0 = a free port), gives the VISA resource
string of the bound address, serves each connection in a daemon thread with ``TCP_NODELAY`` set
(a small reply must not wait for the client's delayed ACK), and on stop closes every open
connection so a client sees the instrument go away. Subclasses speak the protocol in
:meth:`TcpServerBase.serve`.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import socket
import socketserver
import threading
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)


class TcpServerBase(abc.ABC):
    """A threaded TCP server on ``host:port`` for one simulated instrument.

    Parameters
    ----------
    instrument
        Short name used in thread names, logs and errors (``"nanonis"``, ``"sr830"`` ...).
    host, port
        Where to listen; port 0 picks a free port (see :attr:`address`).
    """

    def __init__(self, instrument: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.instrument = instrument
        self._host, self._port = host, port
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()

    @abc.abstractmethod
    def serve(self, conn: socket.socket) -> None:
        """Speak the instrument's protocol on one accepted connection until it is over.

        Returning (or raising ``OSError``) ends the connection; the base class closes it.
        """

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound; RuntimeError before :meth:`start`."""
        if self._server is None:
            raise RuntimeError(f"{self.instrument} server not started; call start() first")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def resource(self) -> str:
        """The VISA resource string that reaches this server (``TCPIP::host::port::SOCKET``)."""
        host, port = self.address
        return f"TCPIP::{host}::{port}::SOCKET"

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self (a started server is left as is)."""
        if self._server is not None:
            return self
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._serve_connection(self.request)

        server = socketserver.ThreadingTCPServer((self._host, self._port), Handler, bind_and_activate=False)
        server.allow_reuse_address = True  # a restarted lab rebinds its fixed port at once
        server.daemon_threads = True
        server.server_bind()
        server.server_activate()
        self._server = server
        # 50 ms poll: stop() returns quickly (the default 0.5 s would dominate test teardown).
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{self.instrument}-server", daemon=True
        )
        self._thread.start()
        log.info("simulated %s on %s", self.instrument, self.resource)
        return self

    def stop(self) -> None:
        """Stop accepting, close every open connection, join the thread; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._conn_lock:
            conns, self._connections = set(self._connections), set()
        for conn in conns:
            close_quietly(conn)
        # After the connections: server_close() joins every handler thread (block_on_close), and
        # a handler only returns once its connection is shut down.
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- per connection -----------------------------------------------------------------------
    def _serve_connection(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._conn_lock:
            self._connections.add(conn)
        try:
            self.serve(conn)
        except OSError as exc:  # peer reset or server stopping: the connection is over either way
            log.debug("%s connection ended: %s", self.instrument, exc)
        finally:
            with self._conn_lock:
                self._connections.discard(conn)
            close_quietly(conn)


def close_quietly(conn: socket.socket) -> None:
    """Shut down and close a connection that the peer may already have closed."""
    with contextlib.suppress(OSError):  # the peer may already be gone; close() still releases the descriptor
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()
