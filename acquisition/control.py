"""The control socket: JSON commands over ZeroMQ REQ/REP, served from a thread.

Request: one frame, a JSON object ``{"command": NAME, ...arguments}`` (see ``state.py`` for the
table). Reply: ``{"ok": bool, "state": STATE, "error": str | null, ...}``. A malformed request
(not UTF-8, not JSON, not an object, no string ``command``) or a refused command gets
``ok: false`` with the reason; malformed ones are counted in :attr:`ControlServer.malformed` and
logged, and nothing a client sends can stop the server. Loopback endpoints only, unless given
CURVE keys (``security=``): then only clients whose public key is in the ``controllers/``
folder may connect (role ``control``, :mod:`stslive.acquisition.formats.security`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import zmq

from stslive.acquisition.formats.security import Security, bind_server, check_bind, secure_client
from stslive.acquisition.state import CommandRefused, RunStateMachine
from stslive.drivers.errors import InstrumentTimeout

log = logging.getLogger(__name__)

_MAX_REQUEST_BYTES = 64 * 1024


class ControlServer:
    """Serves :class:`RunStateMachine` commands on a REP socket in a daemon thread.

    Parameters
    ----------
    machine
        The run's state machine.
    endpoint
        Where to bind, e.g. ``"tcp://127.0.0.1:5557"`` (port 0 picks a free one, see
        :attr:`endpoint`).
    context
        ZeroMQ context (injectable for tests); a private one by default.
    security
        CURVE keys: only controller keys may connect (viewers are refused). ``None``: loopback only.
    """

    def __init__(
        self,
        machine: RunStateMachine,
        endpoint: str,
        *,
        context: zmq.Context | None = None,
        security: Security | None = None,
    ) -> None:
        check_bind(endpoint, security)
        self._machine = machine
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, _MAX_REQUEST_BYTES)
        # CURVE: the guard is released in close(), before the context ends
        self._guard = bind_server(self._sock, endpoint, security, role="control", what="the control socket")
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.malformed = 0
        self.refused = 0
        self.handled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stslive-control", daemon=True)

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not dict(poller.poll(100)):
                continue
            raw = self._sock.recv_multipart()
            reply = self.handle(raw)
            self._sock.send(json.dumps(reply).encode())

    def handle(self, frames: list[bytes]) -> dict[str, Any]:
        """Parse and execute one request; always returns a reply map."""
        try:
            name, args = _parse(frames)
        except CommandRefused as exc:
            self.malformed += 1
            log.warning("control: malformed request rejected (%d so far): %s", self.malformed, exc)
            return {"ok": False, "state": self._machine.state, "error": str(exc)}
        try:
            reply = self._machine.execute(name, args)
        except CommandRefused as exc:
            self.refused += 1
            return {"ok": False, "state": self._machine.state, "error": str(exc)}
        self.handled += 1
        return {**reply, "error": None}

    def close(self) -> None:
        """Stop the thread and close the socket; safe to call twice."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        if not self._sock.closed:
            self._sock.close()
        if self._guard is not None:
            self._guard.release()
        if self._own_context:
            self._ctx.term()


def _parse(frames: list[bytes]) -> tuple[str, dict[str, Any]]:
    if len(frames) != 1:
        raise CommandRefused(f"a request is one frame of JSON, got {len(frames)} frames")
    try:
        doc = json.loads(frames[0].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandRefused(f"request is not UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("command"), str):
        raise CommandRefused('request must be a JSON object with a string "command"')
    name = doc.pop("command")
    return name, doc


def send_command(
    endpoint: str,
    command: str,
    *,
    timeout_s: float = 10.0,
    context: zmq.Context | None = None,
    security: Security | None = None,
    **args: Any,
) -> dict[str, Any]:
    """Send one command to a running scan's control socket and return its reply map.

    ``security``: this client's CURVE keys, for a control socket bound with keys (a key the
    scan does not list under ``controllers/`` gets no reply: the timeout below).

    Raises
    ------
    InstrumentTimeout
        No reply within ``timeout_s`` (no scan at ``endpoint``, or it is stuck in a long sweep:
        commands are answered at once, but check the endpoint).
    """
    ctx = zmq.Context.instance() if context is None else context
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    # Only a finished connection takes the request, and sending waits for one at most the timeout:
    # a REQ whose CURVE handshake was refused has no peer, and a plain send would block for ever.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout_s * 1000)))
    deadline = time.monotonic() + timeout_s
    silence = InstrumentTimeout("control", f"no reply from {endpoint} within {timeout_s:g} s; is a scan running there?")
    try:
        if security is not None:
            secure_client(sock, security)
        sock.connect(endpoint)
        try:
            sock.send(json.dumps({"command": command, **args}).encode())
        except zmq.Again:
            raise silence from None
        if not sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            raise silence
        return json.loads(sock.recv().decode())
    finally:
        sock.close()
