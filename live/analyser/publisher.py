"""The live analyser's results stream: a ZeroMQ PUB socket that sends results messages.

:class:`ResultsPublisher` binds the socket (loopback only unless CURVE keys are given) and sends
the three kinds of messages of :mod:`stslive.live.results_io`: a batch of analysed pixels as one
``pixels`` message, the model's full state (maps, snapshot, status), and its status alone.
Sending never blocks: a subscriber that falls behind loses messages beyond the high-water mark.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from stslive.acquisition.formats.security import Security, bind_server, check_bind
from stslive.live.results import ResultsModel
from stslive.live.results_io import encode_message, model_messages, pixels_message, status_message


class ResultsPublisher:
    """The PUB socket of the analyser's results.

    Parameters
    ----------
    bind
        Endpoint to bind (``tcp://127.0.0.1:0`` picks a free port); refused on a non-loopback
        interface without ``security``.
    context
        ZeroMQ context.
    hwm
        Send high-water mark, messages.
    security
        CURVE server keys (role ``data``: viewer and controller keys read it); None: no keys.
    """

    def __init__(self, bind: str, *, context: zmq.Context, hwm: int, security: Security | None = None) -> None:
        check_bind(bind, security)
        self._socket: zmq.Socket | None = context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        # closes the socket itself when the bind fails
        self._guard = bind_server(self._socket, bind, security, role="data", what="the results stream")
        #: thread CPU seconds spent encoding and sending ``pixels`` messages
        self.pixel_seconds = 0.0

    @property
    def endpoint(self) -> str | None:
        """The endpoint actually bound (port resolved); None once closed."""
        return None if self._socket is None else self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def send_pixels(self, columns: dict[str, np.ndarray]) -> None:
        """One ``pixels`` message for a whole analysed batch (arrays: per-pixel JSON costs more than the analysis)."""
        if self._socket is None:
            return
        t0 = time.thread_time()
        self._socket.send_multipart(encode_message(*pixels_message(columns)), copy=False)
        self.pixel_seconds += time.thread_time() - t0

    def send_model(self, model: ResultsModel) -> None:
        """The model's full state: maps, snapshot and status messages."""
        if self._socket is None:
            return
        for message in model_messages(model):
            self._socket.send_multipart(encode_message(*message), copy=False)

    def send_status(self, model: ResultsModel) -> None:
        """The model's status message alone."""
        if self._socket is not None:
            self._socket.send_multipart(encode_message(*status_message(model)), copy=False)

    def close(self) -> None:
        """Close the socket, then release the CURVE authenticator (if any)."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._guard is not None:
            self._guard.release()
            self._guard = None
