"""A run archive (and its analysis file) as a viewer data source, followed while either grows.

:class:`ArchiveSpectra` reads a run archive for the screen: display spectra, topography, set-point
sets, pixel progress and the run's phase; a damaged file is opened within a deadline and only its
readable pixels count (:mod:`~stslive.live.viewer.archive_open`). :func:`poll_archive` moves one
reading into a :class:`~stslive.live.viewer.scan_state.ScanState` and the results model.
:class:`FileSource` does that on a worker thread together with the analysis file (``maps.h5`` or
``RUN.analysis.h5`` beside the archive, or one given).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stslive.acquisition.formats.archive import ArchiveHealth
from stslive.acquisition.formats.archive.opener import swmr_writer_flagged, writer_alive
from stslive.acquisition.formats.recording import TOPO_FROM_FILE, TOPO_FROM_Z, recording_kind, topography_from_z
from stslive.drivers.errors import ArchiveError, FileFormatError, StsliveError
from stslive.live.results import ResultsModel
from stslive.live.results_io import load_maps_h5
from stslive.live.viewer.archive_open import open_for_viewing, truncation_note
from stslive.live.viewer.scan_state import ScanFrame, ScanState, phase_from_archive, stop_rule_from_archive
from stslive.live.viewer.sources import SourceBase, display_conductance

log = logging.getLogger(__name__)


class ArchiveSpectra:
    """Display spectra, geometry, pixel progress and run phase of a run archive.

    Opened with :func:`~stslive.live.viewer.archive_open.open_for_viewing` (SWMR while a writer
    appends, never hanging on a damaged file); only the worker threads call it. One lock
    serialises the reads (h5py serialises them anyway).

    Parameters
    ----------
    path
        The run archive.
    current
        Current channel of the spectra; default the first named "Current ...".
    timeout_s
        Deadline (s) for opening a file a writer holds or that is truncated.
    """

    def __init__(self, path: str | Path, *, current: str | None = None, timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if self.path.is_file() and recording_kind(self.path) != "stslive":
            raise FileFormatError(
                self.path, "a Nanonis grid, not a run archive: analyse it (stslive analyse) and view its maps.h5"
            )
        self.reader = open_for_viewing(self.path, timeout_s=timeout_s)
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
        self.frame = ScanFrame.from_geometry(self.reader.geometry)
        self._topo_cache: tuple[int, np.ndarray | None, str] | None = None

    @property
    def health(self) -> ArchiveHealth:
        """How complete the file is; a truncated file's ``readable`` says which pixels survived."""
        return self.reader.health

    @property
    def shape(self) -> tuple[int, int]:
        ny, nx = self.reader.shape
        return int(ny), int(nx)

    @property
    def pixel_nm(self) -> float:
        return float(self.reader.geometry.pixel_size_m[0] * 1e9)

    def _measured(self) -> np.ndarray:
        """Measured pixels that can be read (a truncated file's reader leaves out what it lost);
        call under the lock."""
        return np.asarray(self.reader.measured, dtype=bool)

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
            measured = self._measured()
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
        """Refreshed measured (and readable) mask, per-pixel set id, end time (unix s) and temperature (K).

        The temperature is the mean of the readings before and after the sweep that exist.
        """
        with self._lock:
            self.reader.refresh()
            measured = self._measured()
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

    def records(self) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
        """The run documents, the log and whether a live writer still holds the file."""
        with self._lock:
            documents, lines = self.reader.documents, self.reader.log
        return documents, lines, swmr_writer_flagged(self.path) and _writer_alive(documents.get("writer"))

    def __call__(self, iy: int, ix: int) -> tuple[np.ndarray, np.ndarray]:
        if self.health.readable is not None and not self.health.readable[iy, ix]:
            raise ArchiveError(self.path, "this pixel's spectrum lies past the end of the truncated file")
        with self._lock:
            spectra = np.asarray(self.reader.read_pixels(slice(iy, iy + 1), slice(ix, ix + 1)))
            bias = np.asarray(self.reader.bias, dtype=np.float64)
        return bias, spectra[0, 0, self.current_index, :]

    def row(self, iy: int) -> tuple[np.ndarray, np.ndarray]:
        """Bias (V) and the current (A) of every pixel of row ``iy``, (nx, n_points), NaN unmeasured."""
        with self._lock:
            spectra = np.asarray(self.reader.read_pixels(slice(iy, iy + 1), slice(None)))
            bias = np.asarray(self.reader.bias, dtype=np.float64)
        current = spectra[0, :, self.current_index, :].astype(np.float64)
        if self.health.readable is not None:
            current[~self.health.readable[iy]] = np.nan
        return bias, current

    def close(self) -> None:
        with self._lock:
            self.reader.close()


def _writer_alive(writer: Any) -> bool:
    """Whether the process named by a writer document may still run (another host: assume so)."""
    return writer_alive(dict(writer) if isinstance(writer, Mapping) else None) is not False


def poll_archive(spectra: ArchiveSpectra, scan: ScanState, model: ResultsModel) -> None:
    """One reading of the archive: progress, phase and line spectra into ``scan``; topography and
    set-point sets into ``model`` (the archive's own topography is the authority)."""
    topo, origin = spectra.topography()
    if topo is not None:
        model.set_topography(topo, origin=origin)
    if not model.setpoint_sets:
        model.set_setpoint_sets(spectra.setpoint_sets())
    progress = spectra.progress()
    before = scan.view().measured
    scan.update_pixels(progress["measured"], progress["time"], progress["temperature_K"])
    documents, lines, writing = spectra.records()
    scan.set_phase(phase_from_archive(documents, lines, writing=writing))
    scan.set_stop_rule(stop_rule_from_archive(documents, lines))
    if spectra.health.truncated:
        scan.set_note(truncation_note(spectra.health, int(progress["measured"].sum())), truncated=True)
    if scan.ny == 1 and not np.array_equal(before, progress["measured"]):
        _read_line(spectra, scan, progress["measured"][0])


def _read_line(spectra: ArchiveSpectra, scan: ScanState, measured: np.ndarray) -> None:
    """Display spectra of every measured pixel of a line cut (a line is short: read it whole)."""
    bias, current = spectra.row(0)
    didv = np.full(current.shape, np.nan)
    axis = bias
    for ix in np.flatnonzero(measured & np.isfinite(current).all(axis=1)):
        axis, didv[ix] = display_conductance(bias, current[ix])
    scan.set_line_spectra(axis, didv)


class FileSource(SourceBase):
    """A run archive (``RUN.h5``) and its analysis file, followed while either grows.

    The analysis file is ``analysis`` if given, else ``maps.h5`` or ``RUN.analysis.h5`` beside
    the archive. Without one, the screen shows the measured pixels and their raw spectra and the
    status bar says so; ``analyse_callback(archive_path, model)`` is the hook where the analyser
    runs the analysis (called once on the worker thread; it fills ``model`` itself).

    Parameters
    ----------
    archive
        The run archive; None to show an analysis file alone (no spectra then).
    analysis
        Explicit analysis file.
    poll_s
        Interval of the worker's re-reads of the archive's measured mask and the analysis
        file (reloaded when its modification time changes).
    timeout_s
        Deadline (s) for opening an archive a writer holds or that is truncated.
    """

    def __init__(
        self,
        archive: str | Path | None,
        *,
        analysis: str | Path | None = None,
        current: str | None = None,
        poll_s: float = 1.0,
        analyse_callback: Callable[[Path, ResultsModel], None] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if archive is None and analysis is None:
            raise FileFormatError("-", "give a run archive RUN.h5, an --analysis maps.h5, or both")
        self.archive_path = None if archive is None else Path(archive)
        self.spectra = None if archive is None else ArchiveSpectra(archive, current=current, timeout_s=timeout_s)
        self.analysis_path = self._find_analysis(analysis)
        self.poll_s = poll_s
        self.analyse_callback = analyse_callback
        self._analysis_mtime: float | None = None
        if self.spectra is not None:
            ny, nx = self.spectra.shape
            model = ResultsModel(ny, nx, pixel_nm=self.spectra.pixel_nm)
            self.scan: ScanState | None = ScanState(ny, nx, frame=self.spectra.frame)
        else:
            assert self.analysis_path is not None  # given: checked above
            model = load_maps_h5(self.analysis_path)
            self._analysis_mtime = self.analysis_path.stat().st_mtime
            self.scan = None
        self.frame = ScanFrame.from_pixel_size(model.pixel_nm) if self.spectra is None else self.spectra.frame
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

    def _load_analysis(self) -> bool:
        """Reload the analysis file if it changed; whether there is one."""
        if self.analysis_path is None or not self.analysis_path.is_file():
            return False
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
        return True

    def _load_once(self) -> None:
        analysed = self._load_analysis()
        spectra, archive, scan = self.spectra, self.archive_path, self.scan
        if spectra is None or archive is None or scan is None:
            name = "-" if self.analysis_path is None else self.analysis_path.name
            self._set_status(f"{name}: analysis only, no archive - spectra unavailable")
            return
        poll_archive(spectra, scan, self.model)  # after the analysis file: the archive's topography wins
        view = scan.view()
        if not analysed and self.analyse_callback is not None and not self.loaded.is_set():
            self.analyse_callback(archive, self.model)
        text = f"{archive.name}: {view.n_measured} of {view.n_total} pixels measured" + (
            " and readable" if spectra.health.truncated else ""
        )
        text += (
            f"; analysis {self.analysis_path.name}"
            if self.analysis_path
            else "; no analysis file yet - showing the measured pixels and raw spectra (run `stslive analyse`)"
        )
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


def _copy_into(src: ResultsModel, dst: ResultsModel) -> None:
    """Copy every map, the topography, snapshot, snapshot history and status fields of ``src`` into ``dst``."""
    dst.update_block(slice(None), slice(None), **src.copy_maps())
    if src.topography is not None:
        dst.set_topography(src.topography, origin=src.topography_origin)
    if src.snapshot is not None:
        dst.set_snapshot(src.snapshot)
    if len(src.history):  # the file's history is the run's; the snapshot above alone would be one row
        dst.set_history(src.history)
    dst.set_setpoint_sets(src.setpoint_sets)
    st = src.status_fields()
    dst.update_status(
        state=st["state"],
        current_set=st["current_set"],
        last_seq=st["last_seq"],
        message=st["message"],
        pixels_per_hour=st["pixels_per_hour"],
        provisional_width=st["provisional_width"],
    )
