"""The run stream's publisher: sends documents on an XPUB (any number of consumers, may drop) and an
optional non-blocking PUSH (one consumer that must not drop), numbering them per run.

Contract: inside a run (:meth:`RunPublisher.start` .. :meth:`RunPublisher.stop`) every document
takes the next ``seq`` (start is 0); the scan never blocks on the stream. Both sockets bind to
loopback only unless given CURVE keys (:mod:`stslive.acquisition.formats.security`). Documents
and wire format: :mod:`stslive.acquisition.formats.documents`; the subscriber is
:mod:`stslive.acquisition.formats.subscriber`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import zmq

from stslive.acquisition.formats.codec import HEADER_FORMATS, HeaderFormat
from stslive.acquisition.formats.documents import (
    ArraySpec,
    DescriptorDoc,
    Document,
    EventDoc,
    ExitStatus,
    FailedPixelDoc,
    HeartbeatDoc,
    RunState,
    StartDoc,
    StopDoc,
    encode,
    new_uid,
)
from stslive.acquisition.formats.security import Security, ServerGuard, bind_server, check_bind
from stslive.drivers.errors import StreamError, StsliveError

__all__ = ["RunPublisher", "check_local_endpoint"]

log = logging.getLogger(__name__)


def check_local_endpoint(endpoint: str) -> None:
    """Refuse endpoints that would publish beyond this machine without keys.

    ``ipc://``/``inproc://`` and ``tcp://`` on a loopback address (127.0.0.0/8, ::1,
    ``localhost``) are allowed; anything else needs ZeroMQ CURVE keys: same as
    :func:`stslive.acquisition.formats.security.check_bind` with no :class:`Security`.
    """
    check_bind(endpoint, None)


class RunPublisher:
    """Publishes run documents on a PUB socket and, optionally, a PUSH socket.

    PUB is for any number of consumers that may miss messages (viewer); its send-HWM is raised
    to ``hwm`` because at the default 1000 a burst drops 20-45 % of messages (``docs/formats.md``).
    The PUB socket is an XPUB so :meth:`wait_for_subscribers` can see subscriptions arrive
    (a SUB that connects after a message was sent never gets it).

    PUSH is for one consumer that must not drop (a recorder). A PUSH with no peer would block
    the scan on send, so it sends non-blocking: what cannot be sent waits in a local backlog
    bounded by ``push_backlog_bytes``, retried before every later send and in :meth:`close`.
    When the backlog is full the oldest messages are dropped and counted in
    ``push_dropped``; the consumer sees the gap in ``seq`` and fills it from the archive.
    The scan is never blocked by the stream.

    Parameters
    ----------
    pub_endpoint
        Where to bind the PUB socket, e.g. ``"tcp://127.0.0.1:5556"`` (port 0: any free port,
        see :attr:`pub_endpoint`). ``None``: no PUB socket.
    push_endpoint
        Where to bind the PUSH socket, or ``None`` (default) for none.
    context
        ZeroMQ context to use (tests inject one); by default a private one, terminated on close.
    header_format
        ``"json"`` or ``"msgpack"``.
    hwm
        Send high-water mark (messages) of both sockets.
    push_backlog_bytes
        Bound of the local PUSH backlog (bytes).
    security
        CURVE keys (:class:`Security`): both sockets then admit only allowed viewer and
        controller keys, on any address. ``None`` (default): loopback only, no keys.
    """

    def __init__(
        self,
        pub_endpoint: str | None = "tcp://127.0.0.1:5556",
        *,
        push_endpoint: str | None = None,
        context: zmq.Context | None = None,
        header_format: HeaderFormat = "json",
        hwm: int = 100_000,
        push_backlog_bytes: int = 256 * 1024 * 1024,
        security: Security | None = None,
    ) -> None:
        if pub_endpoint is None and push_endpoint is None:
            raise StreamError("RunPublisher needs a pub_endpoint, a push_endpoint or both")
        if header_format not in HEADER_FORMATS:
            raise StreamError(f"header_format must be 'json' or 'msgpack', not {header_format!r}")
        for ep in (pub_endpoint, push_endpoint):
            if ep is not None:
                check_bind(ep, security)
        # CURVE: set before any socket exists, released in close()
        self._security = security
        self._guards: list[ServerGuard] = []
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self.header_format: HeaderFormat = header_format
        self._pub: zmq.Socket | None = None
        self._push: zmq.Socket | None = None
        self._backlog: collections.deque[list[bytes]] = collections.deque()
        self._backlog_bytes = 0
        self._backlog_limit = push_backlog_bytes
        self.push_dropped = 0
        self.sent = 0
        self._subscribers = 0
        try:
            if pub_endpoint is not None:
                self._pub = self._bind(zmq.XPUB, pub_endpoint, hwm)
                # report every SUB's subscription, not only the first one per topic
                self._pub.setsockopt(zmq.XPUB_VERBOSE, 1)
            if push_endpoint is not None:
                self._push = self._bind(zmq.PUSH, push_endpoint, hwm)
        except StsliveError:  # a CURVE key file is missing (ConfigError) or the port is taken (StreamError)
            self.close(linger_s=0)
            raise
        self._run_uid: str | None = None
        self._seq = -1
        self._last_run_uid: str | None = None  # for idle heartbeats: where the last run ended
        self._last_seq = -1
        self._descriptor_uid: str | None = None
        self._counts: collections.Counter[str] = collections.Counter()

    def _bind(self, kind: int, endpoint: str, hwm: int) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)  # close() flushes explicitly with its own deadline
        guard = bind_server(sock, endpoint, self._security, role="data", what="the run stream")
        if guard is not None:
            self._guards.append(guard)
        return sock

    # -- endpoints and subscribers --
    @property
    def pub_endpoint(self) -> str | None:
        """The endpoint the PUB socket actually bound (port resolved)."""
        return None if self._pub is None else self._pub.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def push_endpoint(self) -> str | None:
        """The endpoint the PUSH socket actually bound (port resolved)."""
        return None if self._push is None else self._push.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def backlog(self) -> int:
        """Messages waiting in the PUSH backlog (no PULL peer yet, or it is slow)."""
        return len(self._backlog)

    def wait_for_subscribers(self, count: int = 1, *, timeout_s: float = 5.0) -> int:
        """Wait until ``count`` subscriptions have reached the PUB socket; returns how many did.

        Each SUB sends one subscription per topic prefix (one with the default filter). Once
        it has arrived, that SUB receives everything published after; this is the handshake
        that keeps a run's first documents from being lost.

        Raises
        ------
        StreamError
            If fewer arrived within ``timeout_s``.
        """
        if self._pub is None:
            raise StreamError("wait_for_subscribers needs a PUB socket")
        deadline = time.monotonic() + timeout_s
        wait_ms = 0  # first take in everything already queued (the count may be stale), then wait
        while True:
            while self._pub.poll(wait_ms):
                msg = self._pub.recv()
                self._subscribers += {b"\x01": 1, b"\x00": -1}.get(msg[:1], 0)
                wait_ms = 0
            if self._subscribers >= count:
                return self._subscribers
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamError(
                    f"only {self._subscribers} of {count} subscription(s) reached {self.pub_endpoint} "
                    f"within {timeout_s} s; is the consumer running and connected to it?"
                )
            wait_ms = int(left * 1000) + 1

    # -- sending --
    def publish(self, doc: Document) -> list[bytes]:
        """Send a complete document as it is (no renumbering); returns the frames sent."""
        frames = encode(doc, header_format=self.header_format)
        if self._pub is not None:
            self._pub.send_multipart(frames, copy=True)  # XPUB never blocks: drops at HWM
        if self._push is not None:
            self._send_push(frames)
        self.sent += 1
        return frames

    def _send_push(self, frames: list[bytes]) -> None:
        assert self._push is not None
        self._drain_backlog()
        if not self._backlog:
            try:
                self._push.send_multipart(frames, flags=zmq.NOBLOCK, copy=True)
                return
            except zmq.Again:
                pass  # no peer, or its queue is full: keep it locally instead of blocking the scan
        size = sum(len(f) for f in frames)
        self._backlog.append(frames)
        self._backlog_bytes += size
        while self._backlog_bytes > self._backlog_limit and self._backlog:
            dropped = self._backlog.popleft()
            self._backlog_bytes -= sum(len(f) for f in dropped)
            self.push_dropped += 1

    def _drain_backlog(self) -> None:
        assert self._push is not None
        while self._backlog:
            try:
                self._push.send_multipart(self._backlog[0], flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            sent = self._backlog.popleft()
            self._backlog_bytes -= sum(len(f) for f in sent)

    def flush(self, *, timeout_s: float = 1.0) -> bool:
        """Try to hand the PUSH backlog to ZeroMQ for up to ``timeout_s``; True if it is empty."""
        if self._push is None:
            return True
        deadline = time.monotonic() + timeout_s
        self._drain_backlog()
        while self._backlog and time.monotonic() < deadline:
            self._push.poll(10, zmq.POLLOUT)
            self._drain_backlog()
        return not self._backlog

    # -- the run's documents --
    def _next(self, kind: str) -> tuple[str, int]:
        if self._run_uid is None:
            raise StreamError(f"cannot publish a {kind} document outside a run; call start() first")
        self._seq += 1
        self._counts[kind] += 1
        return self._run_uid, self._seq

    @property
    def run_uid(self) -> str | None:
        """The open run's uid, or None between runs."""
        return self._run_uid

    def start(self, *, run_uid: str | None = None, **fields: Any) -> StartDoc:
        """Open a run (seq restarts at 0) and publish its start document.

        ``fields`` are :class:`StartDoc`'s: grid, channel_names, channel_units, n_points,
        setpoint_sets, instruments, software_version, metadata.
        """
        if self._run_uid is not None:
            raise StreamError(f"run {self._run_uid} is still open; call stop() before starting another")
        self._run_uid, self._seq, self._descriptor_uid = run_uid or new_uid(), -1, None
        self._counts.clear()
        uid, seq = self._next("start")
        try:
            doc = StartDoc(run_uid=uid, uid=uid, seq=seq, **fields)
        except (StreamError, TypeError):
            self._run_uid = None
            raise
        self.publish(doc)
        return doc

    def descriptor(self, arrays: Mapping[str, ArraySpec], *, name: str = "primary") -> DescriptorDoc:
        """Publish the descriptor of the events to come."""
        run_uid, seq = self._next("descriptor")
        doc = DescriptorDoc(run_uid=run_uid, seq=seq, data_keys=dict(arrays), name=name)
        self._descriptor_uid = doc.uid
        self.publish(doc)
        return doc

    def event(self, *, arrays: Mapping[str, np.ndarray], **fields: Any) -> EventDoc:
        """Publish one pixel's event; ``fields`` are :class:`EventDoc`'s (ix, iy, x_m, ...)."""
        if self._descriptor_uid is None:
            stage = "start() and then a descriptor" if self._run_uid is None else "a descriptor"
            raise StreamError(f"publish {stage} before the first event")
        run_uid, seq = self._next("event")
        doc = EventDoc(run_uid=run_uid, seq=seq, descriptor_uid=self._descriptor_uid, arrays=dict(arrays), **fields)
        self.publish(doc)
        return doc

    def failed_pixel(self, **fields: Any) -> FailedPixelDoc:
        """Publish a failed pixel (ix, iy, x_m, y_m, setpoint_set_id, reason, attempts)."""
        run_uid, seq = self._next("failed")
        doc = FailedPixelDoc(run_uid=run_uid, seq=seq, **fields)
        self.publish(doc)
        return doc

    def heartbeat(self, state: RunState = "idle", *, message: str = "") -> HeartbeatDoc:
        """Publish a heartbeat; inside a run it takes the next seq, outside it has seq -1."""
        if self._run_uid is None:
            doc = HeartbeatDoc(
                run_uid=None,
                seq=-1,
                state=state,
                last_run_uid=self._last_run_uid,
                last_seq=self._last_seq,
                message=message,
            )
        else:
            run_uid, seq = self._next("heartbeat")
            doc = HeartbeatDoc(
                run_uid=run_uid, seq=seq, state=state, last_run_uid=run_uid, last_seq=seq - 1, message=message
            )
        self.publish(doc)
        return doc

    def stop(self, exit_status: ExitStatus = "success", *, reason: str = "") -> StopDoc:
        """Publish the stop document (with counts per kind, stop included) and close the run."""
        run_uid, seq = self._next("stop")
        doc = StopDoc(run_uid=run_uid, seq=seq, exit_status=exit_status, reason=reason, counts=dict(self._counts))
        self.publish(doc)
        self._last_run_uid, self._last_seq = run_uid, seq
        self._run_uid, self._descriptor_uid = None, None
        return doc

    # -- lifetime --
    def close(self, *, linger_s: float = 1.0) -> None:
        """Flush the PUSH backlog for up to ``linger_s``, then close the sockets (and own context)."""
        if self._push is not None:
            self.flush(timeout_s=linger_s)
            if self._backlog:
                log.warning(
                    "closing run stream with %d undelivered PUSH message(s): no consumer took them", len(self._backlog)
                )
            self._push.close(linger=int(linger_s * 1000))
            self._push = None
        if self._pub is not None:
            self._pub.close(linger=int(linger_s * 1000))
            self._pub = None
        for guard in self._guards:  # stops the context's authenticator with the last socket
            guard.release()
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> RunPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
