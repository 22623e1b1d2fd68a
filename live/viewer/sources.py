"""Data sources of the control-room viewer: they fill a ResultsModel off the GUI thread.

A source owns a worker thread (file loading and polling, or a ZeroMQ subscription) and a
spectrum fetcher thread; the window only calls the cheap, non-blocking methods of
:class:`DataSource` from its timer. Topics a :class:`StreamSource` subscribes to are
:data:`STREAM_TOPICS` (``pixel``, ``maps``, ``snapshot``, ``status``; messages built by
:mod:`stslive.live.results_io`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from stslive.acquisition.formats.archive import ArchiveReader
from stslive.acquisition.formats.recording import TOPO_FROM_FILE, TOPO_FROM_Z, open_recording, topography_from_z
from stslive.drivers.errors import FileFormatError, StreamError, StsliveError
from stslive.live.kernels import conductance_sign, derivative, prepare_sweep
from stslive.live.results import PixelResult, ResultsModel
from stslive.live.results_io import apply_message, decode_message, load_maps_h5, model_from_message

if TYPE_CHECKING:
    from stslive.acquisition.formats.security import Security

log = logging.getLogger(__name__)

STREAM_TOPICS = ("pixel", "maps", "snapshot", "status")


@dataclass(frozen=True, slots=True)
class SpectrumData:
    """One pixel's spectrum prepared for display (SI units), with the stored fit results."""

    iy: int
    ix: int
    bias_V: np.ndarray
    didv_S: np.ndarray
    result: PixelResult | None
    note: str = ""


class SpectrumReader(Protocol):
    """Reads the display spectrum of one pixel (blocking I/O; called on a worker thread)."""

    def __call__(self, iy: int, ix: int) -> tuple[np.ndarray, np.ndarray]: ...


class DataSource(Protocol):
    """What the window needs from a source; every method returns at once (no I/O)."""

    model: ResultsModel

    def start(self) -> None:
        """Start the worker thread(s)."""

    def stop(self) -> None:
        """Stop and join the worker thread(s)."""

    def request_spectrum(self, iy: int, ix: int) -> None:
        """Ask for a pixel's spectrum; the latest request wins."""

    def take_spectrum(self) -> SpectrumData | None:
        """The spectrum fetched since the last call, else None."""

    def status_text(self) -> str:
        """One line for the status bar (what is loaded, what is missing, errors)."""


def display_conductance(
    bias_V: np.ndarray, current_A: np.ndarray, *, points: int = 11
) -> tuple[np.ndarray, np.ndarray]:
    """Ascending bias (V) and dI/dV (S) of one I(V) sweep, made positive, for drawing.

    The kernels' own sweep ordering, sign rule and Savitzky-Golay derivative
    (:func:`~stslive.live.kernels.derivative`, 2 * ``points`` - 1 samples, order 2), so the curve
    the fits are drawn on follows the analysis conventions exactly.
    """
    bias, cur = prepare_sweep(np.asarray(bias_V, dtype=np.float64), np.asarray(current_A, dtype=np.float64))
    points = min(points, (bias.size + 1) // 2)  # the 2 * points - 1 window must fit a short sweep
    points -= 1 - points % 2  # odd
    didv = derivative(bias, cur, points=points, method="savgol", polyorder=2)
    return bias, didv * conductance_sign(bias, cur)


class SpectrumFetcher:
    """A worker thread serving spectrum requests, newest first: hovering fires many, we read one.

    Parameters
    ----------
    model
        Supplies the pixel's stored fit results.
    reader
        Blocking function (iy, ix) -> (bias_V, current_A); None when no spectra are available,
        then requests yield a :class:`SpectrumData` with an explanatory ``note`` and no curve.
    missing_note
        The note shown when ``reader`` is None.
    """

    def __init__(self, model: ResultsModel, reader: SpectrumReader | None, *, missing_note: str = "") -> None:
        self.model = model
        self.reader = reader
        self.missing_note = missing_note
        self._cond = threading.Condition()
        self._request: tuple[int, int] | None = None
        self._result: SpectrumData | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="stslive-spectrum", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def request(self, iy: int, ix: int) -> None:
        with self._cond:
            self._request = (iy, ix)
            self._cond.notify_all()

    def take(self) -> SpectrumData | None:
        with self._cond:
            out, self._result = self._result, None
            return out

    def fetch_now(self, iy: int, ix: int) -> SpectrumData:
        """Read synchronously (snapshot rendering, tests); not for the GUI thread of a live window."""
        result = self.model.pixel(iy, ix)
        if self.reader is None:
            empty = np.zeros(0)
            return SpectrumData(iy, ix, empty, empty, result, note=self.missing_note)
        try:
            bias, current = self.reader(iy, ix)
        except StsliveError as exc:
            empty = np.zeros(0)
            return SpectrumData(iy, ix, empty, empty, result, note=f"spectrum unavailable: {exc}")
        if not np.all(np.isfinite(current)):
            empty = np.zeros(0)
            return SpectrumData(iy, ix, empty, empty, result, note="pixel not measured yet (NaN spectrum)")
        bias, didv = display_conductance(bias, current)
        return SpectrumData(iy, ix, bias, didv, result)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._request is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                iy, ix = self._request
                self._request = None
            data = self.fetch_now(iy, ix)
            with self._cond:
                self._result = data


class ArchiveSpectra:
    """Display spectra, geometry and pixel metadata of a run archive (``stslive.acquisition.formats.archive``).

    Opened in SWMR read mode so a running acquisition can keep appending; only the worker
    threads call it. One lock serialises the reads (h5py serialises them anyway).
    """

    def __init__(self, path: str | Path, *, current: str | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        recording = open_recording(self.path, swmr=True)
        if not isinstance(recording, ArchiveReader):
            recording.close()
            raise FileFormatError(
                self.path, "a Nanonis grid, not a run archive: analyse it (stslive analyse) and view its maps.h5"
            )
        self.reader = recording
        names = list(self.reader.channel_names)
        wanted = current or next((n for n in names if n.lower().startswith("current")), None)
        if wanted not in names:
            self.reader.close()
            raise FileFormatError(
                self.path,
                f"no current channel {repr(current) + ' ' if current else ''}among "
                f"{names}; pick one with --current NAME",
            )
        self.current_index = names.index(wanted)
        self._topo_cache: tuple[int, np.ndarray | None, str] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        ny, nx = self.reader.shape
        return int(ny), int(nx)

    @property
    def pixel_nm(self) -> float:
        return float(self.reader.geometry.pixel_size_m[0] * 1e9)

    def topography(self) -> tuple[np.ndarray | None, str]:
        """The run's topography (m) and where it comes from, "" when there is none.

        Same rule as the offline analysis (:attr:`stslive.acquisition.formats.recording.SpectraSource.topography`):
        a stored ``/entry/sample/topography``, else the measured tip heights z at the set-point with
        the least-squares plane (piezo tilt) and the per-set offsets removed. The fit is redone
        only when the number of measured pixels changed (a finished run is polled forever).
        """
        with self._lock:
            stored = self.reader.topography
            if stored is not None:
                return np.asarray(stored, dtype=np.float32), TOPO_FROM_FILE
            self.reader.refresh()
            measured = np.asarray(self.reader.measured, dtype=bool)
            n = int(measured.sum())
            if self._topo_cache is not None and self._topo_cache[0] == n:
                return self._topo_cache[1], self._topo_cache[2]
            meta = self.reader.pixel_meta
        topo = topography_from_z(np.where(measured, meta["z_m"], np.nan), set_ids=meta["setpoint_set_id"])
        origin = "" if topo is None else TOPO_FROM_Z
        self._topo_cache = (n, topo, origin)
        return topo, origin

    def setpoint_sets(self) -> dict[int, dict]:
        with self._lock:
            return {int(k): v.to_dict() for k, v in self.reader.setpoint_sets.items()}

    def progress(self) -> dict[str, np.ndarray]:
        """Refreshed measured mask and the per-pixel set id, end time and temperature (mean of before/after)."""
        with self._lock:
            self.reader.refresh()
            measured = np.asarray(self.reader.measured, dtype=bool)
            meta = self.reader.pixel_meta
        temps = np.stack([meta["temperature_before_K"], meta["temperature_after_K"]]).astype(np.float64)
        finite = np.isfinite(temps)
        count = finite.sum(axis=0)
        # mean of the readings that exist; NaN where neither was read (no warning for empty pixels)
        temperature = np.where(count > 0, np.where(finite, temps, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
        return {
            "measured": measured,
            "setpoint_set": np.asarray(meta["setpoint_set_id"]),
            "time": np.asarray(meta["t_end"], dtype=np.float64),
            "temperature_K": temperature,
        }

    def __call__(self, iy: int, ix: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            spectra = np.asarray(self.reader.read_pixels(slice(iy, iy + 1), slice(ix, ix + 1)))
            bias = np.asarray(self.reader.bias, dtype=np.float64)
        return bias, spectra[0, 0, self.current_index, :]

    def close(self) -> None:
        with self._lock:
            self.reader.close()


class _SourceBase:
    """Spectrum fetcher, status line and worker-thread plumbing shared by the sources."""

    model: ResultsModel

    def __init__(self, model: ResultsModel, spectra: SpectrumReader | None, missing_note: str) -> None:
        self.model = model
        self._fetcher = SpectrumFetcher(model, spectra, missing_note=missing_note)
        self._status = ""
        self._status_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    def _set_status(self, text: str) -> None:
        with self._status_lock:
            self._status = text

    def status_text(self) -> str:
        with self._status_lock:
            return self._status

    def request_spectrum(self, iy: int, ix: int) -> None:
        self._fetcher.request(iy, ix)

    def take_spectrum(self) -> SpectrumData | None:
        return self._fetcher.take()

    def fetch_spectrum_now(self, iy: int, ix: int) -> SpectrumData:
        return self._fetcher.fetch_now(iy, ix)

    def _start_worker(self, target: Callable[[], None], name: str) -> None:
        self._fetcher.start()
        self._worker = threading.Thread(target=target, name=name, daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=5)
        self._fetcher.stop()


class FileSource(_SourceBase):
    """A run archive (``RUN.h5``) and its analysis file, followed while either grows.

    The analysis file is ``analysis`` if given, else ``maps.h5`` or ``RUN.analysis.h5`` beside
    the archive. Without one, the maps show only which pixels are measured and the status bar
    says so; ``analyse_callback(archive_path, model)`` is the hook where the analyser runs the
    analysis (called once on the worker thread; it fills ``model`` itself).

    Parameters
    ----------
    archive
        The run archive; None to show an analysis file alone (no spectra then).
    analysis
        Explicit analysis file.
    poll_s
        Interval of the worker's re-reads of the archive's measured mask and the analysis
        file (reloaded when its modification time changes).
    """

    def __init__(
        self,
        archive: str | Path | None,
        *,
        analysis: str | Path | None = None,
        current: str | None = None,
        poll_s: float = 1.0,
        analyse_callback: Callable[[Path, ResultsModel], None] | None = None,
    ) -> None:
        if archive is None and analysis is None:
            raise FileFormatError("-", "give a run archive RUN.h5, an --analysis maps.h5, or both")
        self.archive_path = None if archive is None else Path(archive)
        self.spectra = None if archive is None else ArchiveSpectra(archive, current=current)
        self.analysis_path = self._find_analysis(analysis)
        self.poll_s = poll_s
        self.analyse_callback = analyse_callback
        self._analysis_mtime: float | None = None
        if self.spectra is not None:
            ny, nx = self.spectra.shape
            model = ResultsModel(ny, nx, pixel_nm=self.spectra.pixel_nm)
        else:
            model = load_maps_h5(self.analysis_path)
            self._analysis_mtime = self.analysis_path.stat().st_mtime
        super().__init__(model, self.spectra, "no run archive given: spectra unavailable")
        self.loaded = threading.Event()

    def _find_analysis(self, analysis: str | Path | None) -> Path | None:
        if analysis is not None:
            path = Path(analysis)
            if not path.is_file():
                raise FileFormatError(path, "analysis file not found; check the --analysis path")
            return path
        if self.archive_path is None:
            return None
        for candidate in (self.archive_path.with_name("maps.h5"), self.archive_path.with_suffix(".analysis.h5")):
            if candidate.is_file():
                return candidate
        return None

    def start(self) -> None:
        self._start_worker(self._run, "stslive-filesource")

    def _load_once(self) -> None:
        analysed = False
        if self.analysis_path is not None and self.analysis_path.is_file():
            mtime = self.analysis_path.stat().st_mtime
            if mtime != self._analysis_mtime:
                loaded = load_maps_h5(self.analysis_path)
                if (loaded.ny, loaded.nx) != (self.model.ny, self.model.nx):
                    raise FileFormatError(
                        self.analysis_path,
                        f"maps are {loaded.ny} x {loaded.nx} but the archive "
                        f"is {self.model.ny} x {self.model.nx}; give the matching --analysis",
                    )
                _copy_into(loaded, self.model)
                self._analysis_mtime = mtime
            analysed = True
        if self.spectra is not None:
            # after the analysis file: the archive's own map (stored, or grown from z) is the authority
            _apply_topography(self.spectra, self.model)
        if self.spectra is not None:
            if not self.model.setpoint_sets:
                self.model.set_setpoint_sets(self.spectra.setpoint_sets())
            progress = self.spectra.progress()
            measured = progress["measured"]
            n = int(measured.sum())
            if not analysed:
                # without results the maps stay empty; status, rate and temperature come from the archive
                iy, ix = np.nonzero(measured & ~self.model.copy_maps(("measured",))["measured"])
                if iy.size:
                    self.model.update_block(iy, ix, **{k: v[iy, ix] for k, v in progress.items()})
                self.model.update_status(state="unknown", message=f"{n} measured pixels, no analysis yet")
                if self.analyse_callback is not None and not self.loaded.is_set():
                    self.analyse_callback(self.archive_path, self.model)
                    analysed = True
            text = f"{self.archive_path.name}: {n} of {measured.size} pixels measured; " + (
                f"analysis {self.analysis_path.name}"
                if self.analysis_path
                else "no analysis file yet - showing the measured pixels only (run `stslive analyse`)"
            )
        else:
            text = f"{self.analysis_path.name}: analysis only, no archive - spectra unavailable"
        self._set_status(text)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._load_once()
            except (StsliveError, OSError) as exc:
                # a file being rewritten can fail to open for a moment; show it and retry next poll
                log.warning("file source: %s", exc)
                self._set_status(f"read error (retrying): {exc}")
            self.loaded.set()
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        super().stop()
        if self.spectra is not None:
            self.spectra.close()


def _apply_topography(spectra: ArchiveSpectra, model: ResultsModel) -> None:
    topo, origin = spectra.topography()
    if topo is not None:
        model.set_topography(topo, origin=origin)


def _copy_into(src: ResultsModel, dst: ResultsModel) -> None:
    """Copy every map, the topography, snapshot and status fields of ``src`` into ``dst``."""
    dst.update_block(slice(None), slice(None), **src.copy_maps())
    if src.topography is not None:
        dst.set_topography(src.topography, origin=src.topography_origin)
    if src.snapshot is not None:
        dst.set_snapshot(src.snapshot)
    dst.set_setpoint_sets(src.setpoint_sets)
    st = src.status_fields()
    dst.update_status(
        state=st["state"],
        current_set=st["current_set"],
        last_seq=st["last_seq"],
        message=st["message"],
        pixels_per_hour=st["pixels_per_hour"],
    )


class StreamSource(_SourceBase):
    """Follows the analyser's PUB endpoint: SUB to :data:`STREAM_TOPICS`, apply each message.

    Use :meth:`connect`, which waits for the first ``status`` or ``maps`` message (it carries
    the grid shape) before building the model. Malformed messages are counted per reason and
    shown in the status line; the subscription keeps going.
    """

    def __init__(
        self,
        socket: object,
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
        context: object | None = None,
        archive: str | Path | None = None,
        current: str | None = None,
        security: Security | None = None,
    ) -> StreamSource:
        """Subscribe to ``endpoint`` and wait up to ``timeout_s`` for the grid shape.

        ``security``: this viewer's CURVE client keys for an analyser bound with keys (an
        unknown key receives nothing: the timeout error then names authentication).
        """
        import zmq

        from stslive.acquisition.formats.security import secure_client  # zmq only when a stream is followed

        ctx = context or zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.LINGER, 0)
        for topic in STREAM_TOPICS:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        if security is not None:
            try:
                secure_client(sock, security)
            except StsliveError:  # a key file is missing: the message says how to make it
                sock.close()
                raise
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout_s
        pending = []
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
                    _apply_topography(self.spectra, self.model)
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
