"""What the control-room window reads from: the data-source protocol and the spectrum fetcher.

A source fills a :class:`~stslive.live.results.ResultsModel` on its own threads; the window calls
only the non-blocking methods of :class:`DataSource` from its timer. The sources are
:class:`~stslive.live.viewer.archive_source.FileSource` (a run archive and its analysis file) and
:class:`~stslive.live.viewer.stream_source.StreamSource` (the analyser's results stream).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from stslive.drivers.errors import StsliveError
from stslive.live.kernels import conductance_sign, derivative, prepare_sweep
from stslive.live.results import PixelResult, ResultsModel
from stslive.live.viewer.scan_state import ScanFrame, ScanState


@dataclass(frozen=True, slots=True)
class DisplaySpectrum:
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
    """What the window needs from a source; every method returns at once (no I/O).

    ``model`` holds the analysis results, ``scan`` what was measured (None when the source sees
    no acquisition record, e.g. a stream without its archive), ``frame`` where the grid lies.
    """

    model: ResultsModel
    scan: ScanState | None
    frame: ScanFrame

    def start(self) -> None:
        """Start the worker thread(s)."""

    def stop(self) -> None:
        """Stop and join the worker thread(s)."""

    def request_spectrum(self, iy: int, ix: int) -> None:
        """Ask for a pixel's spectrum; the latest request wins."""

    def take_spectrum(self) -> DisplaySpectrum | None:
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
        then requests yield a :class:`DisplaySpectrum` with an explanatory ``note`` and no curve.
    missing_note
        The note shown when ``reader`` is None.
    """

    def __init__(self, model: ResultsModel, reader: SpectrumReader | None, *, missing_note: str = "") -> None:
        self.model = model
        self.reader = reader
        self.missing_note = missing_note
        self._cond = threading.Condition()
        self._request: tuple[int, int] | None = None
        self._result: DisplaySpectrum | None = None
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

    def take(self) -> DisplaySpectrum | None:
        with self._cond:
            out, self._result = self._result, None
            return out

    def fetch_now(self, iy: int, ix: int) -> DisplaySpectrum:
        """Read synchronously (snapshot rendering, tests); not for the GUI thread of a live window."""
        result = self.model.pixel(iy, ix)
        if self.reader is None:
            empty = np.zeros(0)
            return DisplaySpectrum(iy, ix, empty, empty, result, note=self.missing_note)
        try:
            bias, current = self.reader(iy, ix)
        except StsliveError as exc:
            empty = np.zeros(0)
            return DisplaySpectrum(iy, ix, empty, empty, result, note=f"spectrum unavailable: {exc}")
        if not np.all(np.isfinite(current)):
            empty = np.zeros(0)
            return DisplaySpectrum(iy, ix, empty, empty, result, note="pixel not measured yet (NaN spectrum)")
        bias, didv = display_conductance(bias, current)
        return DisplaySpectrum(iy, ix, bias, didv, result)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._request is None and not self._stopping:
                    self._cond.wait()
                request = self._request
                if self._stopping or request is None:
                    return
                iy, ix = request
                self._request = None
            data = self.fetch_now(iy, ix)
            with self._cond:
                self._result = data


class SourceBase:
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

    def take_spectrum(self) -> DisplaySpectrum | None:
        return self._fetcher.take()

    def fetch_spectrum_now(self, iy: int, ix: int) -> DisplaySpectrum:
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
