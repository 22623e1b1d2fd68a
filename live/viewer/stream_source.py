"""The analyser's results stream as a viewer data source.

:class:`StreamSource` subscribes to :data:`STREAM_TOPICS` of the analyser's PUB endpoint (messages
of :mod:`stslive.live.results_io`) and applies each to its results model on a worker thread;
malformed messages are counted by reason, never fatal. With a run archive it also reads the
spectra and the topography from it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from stslive.acquisition.formats.subscriber import connect_socket
from stslive.drivers.errors import StreamError, StsliveError
from stslive.live.results import ResultsModel
from stslive.live.results_io import Message, apply_message, decode_message, model_from_message
from stslive.live.viewer.archive_source import ArchiveSpectra, apply_topography
from stslive.live.viewer.sources import SourceBase

if TYPE_CHECKING:
    from stslive.acquisition.formats.security import Security

log = logging.getLogger(__name__)

STREAM_TOPICS = ("pixel", "maps", "snapshot", "status")


class StreamSource(SourceBase):
    """Follows the analyser's PUB endpoint: SUB to :data:`STREAM_TOPICS`, apply each message.

    Use :meth:`connect`, which waits for the first ``status`` or ``maps`` message (it carries
    the grid shape) before building the model. Malformed messages are counted per reason and
    shown in the status line; the subscription keeps going.
    """

    def __init__(
        self,
        socket: zmq.Socket,
        model: ResultsModel,
        endpoint: str,
        *,
        archive: str | Path | None = None,
        current: str | None = None,
    ) -> None:
        spectra = None if archive is None else ArchiveSpectra(archive, current=current)
        super().__init__(model, spectra, "live stream only: give --archive RUN.h5 to see spectra")
        self._socket = socket
        self.endpoint = endpoint
        self.spectra = spectra
        self.received = 0
        self.rejected: Counter[str] = Counter()
        self.topography_poll_s = 2.0

    @classmethod
    def connect(
        cls,
        endpoint: str,
        *,
        timeout_s: float = 10.0,
        context: zmq.Context | None = None,
        archive: str | Path | None = None,
        current: str | None = None,
        security: Security | None = None,
    ) -> StreamSource:
        """Subscribe to ``endpoint`` and wait up to ``timeout_s`` for the grid shape.

        ``security``: this viewer's CURVE client keys for an analyser bound with keys (an
        unknown key receives nothing: the timeout error then names authentication).
        """
        ctx = context or zmq.Context.instance()
        sock = connect_socket(ctx, endpoint, topics=[t.encode() for t in STREAM_TOPICS], security=security)
        deadline = time.monotonic() + timeout_s
        pending: list[Message] = []
        while time.monotonic() < deadline:
            if not sock.poll(100):
                continue
            try:
                topic, header, arrays = decode_message(sock.recv_multipart())
            except StreamError as exc:
                log.warning("rejected results message: %s", exc)
                continue
            if topic in ("status", "maps"):
                model = model_from_message(topic, header)
                source = cls(sock, model, endpoint, archive=archive, current=current)
                for message in [*pending, (topic, header, arrays)]:
                    source._apply(*message)
                return source
            pending.append((topic, header, arrays))
        sock.close()
        # a CURVE server drops a refused handshake without a word: silence is all the client sees
        auth = (
            ""
            if security is None
            else "; with keys, also check that this client's key is in the analyser's "
            "viewers/ or controllers/ folder and that server.key is the analyser's (authentication)"
        )
        raise StreamError(
            f"no results on {endpoint} within {timeout_s:.0f} s: is `stslive analyser` running and "
            f"publishing there?{auth}"
        )

    def _apply(self, topic: str, header: dict, arrays: dict) -> None:
        try:
            apply_message(self.model, topic, header, arrays)
            self.received += 1
        except StsliveError as exc:
            self.rejected[type(exc).__name__] += 1
            log.warning("rejected %s message: %s", topic, exc)

    def start(self) -> None:
        self._start_worker(self._run, "stslive-streamsource")

    def _run(self) -> None:
        next_topo = 0.0
        while not self._stop.is_set():
            if self.spectra is not None and time.monotonic() >= next_topo:
                # the analyser's messages carry no tip heights: the archive's z map is the topography
                next_topo = time.monotonic() + self.topography_poll_s
                try:
                    apply_topography(self.spectra, self.model)
                except (StsliveError, OSError) as exc:
                    log.warning("stream source: topography from %s: %s", self.spectra.path, exc)
                    self.rejected["topography read"] += 1
            if not self._socket.poll(100):
                self._update_status()
                continue
            try:
                self._apply(*decode_message(self._socket.recv_multipart()))
            except StreamError as exc:
                self.rejected[type(exc).__name__] += 1
                log.warning("rejected results message: %s", exc)
            self._update_status()

    def _update_status(self) -> None:
        bad = sum(self.rejected.values())
        self._set_status(
            f"live: {self.endpoint}, {self.received} messages"
            + (f", {bad} rejected ({dict(self.rejected)})" if bad else "")
        )

    def stop(self) -> None:
        super().stop()
        self._socket.close()
        if self.spectra is not None:
            self.spectra.close()
