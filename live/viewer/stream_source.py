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
from stslive.live.viewer.archive_source import ArchiveSpectra, poll_archive
from stslive.live.viewer.scan_state import ScanFrame, ScanState
from stslive.live.viewer.sources import SourceBase

if TYPE_CHECKING:
    from stslive.acquisition.formats.security import Security

log = logging.getLogger(__name__)

#: ("pixel" also subscribes "pixels"; "history" lets a viewer that joins late draw the whole convergence)
STREAM_TOPICS = ("pixel", "maps", "snapshot", "history", "status")


class StreamSource(SourceBase):
    """Follows the analyser's PUB endpoint: SUB to :data:`STREAM_TOPICS`, apply each message.

    Use :meth:`connect`, which waits for the first ``status`` or ``maps`` message (it carries
    the grid shape) before building the model. Malformed messages are counted per reason and
    shown in the status line; the subscription keeps going. With the run archive, its progress,
    phase, topography and spectra are read every ``archive_poll_s`` seconds into :attr:`scan`:
    the screen then shows measured pixels before the analyser has published them.
    """

    def __init__(
        self, socket: zmq.Socket, model: ResultsModel, endpoint: str, *, spectra: ArchiveSpectra | None = None
    ) -> None:
        super().__init__(model, spectra, "live stream only: give the run archive too to see spectra")
        self._socket = socket
        self.endpoint = endpoint
        self.spectra = spectra
        if spectra is not None and spectra.shape != (model.ny, model.nx):
            raise StreamError(
                f"the analyser publishes a {model.ny} x {model.nx} grid but {spectra.path.name} is "
                f"{spectra.shape[0]} x {spectra.shape[1]}: give this run's archive"
            )
        frame = ScanFrame.from_pixel_size(model.pixel_nm) if spectra is None else spectra.frame
        self.scan: ScanState | None = None if spectra is None else ScanState(model.ny, model.nx, frame=frame)
        self.frame = frame
        self.received = 0
        self.rejected: Counter[str] = Counter()
        self.archive_poll_s = 1.0

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

        ``archive``: the run's archive, for spectra and acquisition progress (opened first, within
        ``timeout_s``). ``security``: this viewer's CURVE client keys for an analyser bound with
        keys (an unknown key receives nothing: the timeout error then names authentication).
        """
        spectra = None if archive is None else ArchiveSpectra(archive, current=current, timeout_s=timeout_s)
        try:
            ctx = context or zmq.Context.instance()
            sock = connect_socket(ctx, endpoint, topics=[t.encode() for t in STREAM_TOPICS], security=security)
        except StsliveError:
            if spectra is not None:
                spectra.close()
            raise
        try:
            return cls._first_messages(sock, endpoint, timeout_s, spectra, security is not None)
        except StsliveError:
            sock.close()
            if spectra is not None:
                spectra.close()
            raise

    @classmethod
    def _first_messages(
        cls, sock: zmq.Socket, endpoint: str, timeout_s: float, spectra: ArchiveSpectra | None, keyed: bool
    ) -> StreamSource:
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
                source = cls(sock, model_from_message(topic, header), endpoint, spectra=spectra)
                for message in [*pending, (topic, header, arrays)]:
                    source._apply(*message)
                return source
            pending.append((topic, header, arrays))
        # a CURVE server drops a refused handshake without a word: silence is all the client sees
        auth = (
            "; with keys, also check that this client's key is in the analyser's "
            "viewers/ or controllers/ folder and that server.key is the analyser's (authentication)"
            if keyed
            else ""
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
        next_poll = 0.0
        while not self._stop.is_set():
            if self.spectra is not None and self.scan is not None and time.monotonic() >= next_poll:
                # the analyser's messages carry neither raw spectra nor tip heights: the archive has both
                next_poll = time.monotonic() + self.archive_poll_s
                try:
                    poll_archive(self.spectra, self.scan, self.model)
                except (StsliveError, OSError) as exc:
                    log.warning("stream source: reading %s: %s", self.spectra.path, exc)
                    self.rejected["archive read"] += 1
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
