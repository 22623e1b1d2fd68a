"""A run archive (and its analysis file) as a viewer data source, followed while either grows.

:class:`ArchiveSpectra` reads display spectra, topography, set-point sets and the per-pixel
metadata of a run archive; :class:`FileSource` fills a results model from the analysis file
(``maps.h5`` or ``RUN.analysis.h5`` beside the archive, or one given) on a worker thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.formats.recording import TOPO_FROM_FILE, TOPO_FROM_Z, topography_from_z
from stslive.drivers.errors import FileFormatError, StsliveError
from stslive.live.results import ResultsModel
from stslive.live.results_io import load_maps_h5
from stslive.live.viewer.sources import SourceBase

log = logging.getLogger(__name__)


class ArchiveSpectra:
    """Display spectra, geometry and pixel metadata of a run archive (``stslive.acquisition.formats.archive``).

    Opened in SWMR read mode so a running acquisition can keep appending; only the worker
    threads call it. One lock serialises the reads (h5py serialises them anyway).
    """

    def __init__(self, path: str | Path, *, current: str | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.reader = open_archive(self.path, swmr=True)
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


class FileSource(SourceBase):
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
            assert self.analysis_path is not None  # given: checked above
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
        spectra, archive = self.spectra, self.archive_path
        if spectra is None or archive is None:
            name = "-" if self.analysis_path is None else self.analysis_path.name
            self._set_status(f"{name}: analysis only, no archive - spectra unavailable")
            return
        # after the analysis file: the archive's own map (stored, or grown from z) is the authority
        apply_topography(spectra, self.model)
        if not self.model.setpoint_sets:
            self.model.set_setpoint_sets(spectra.setpoint_sets())
        progress = spectra.progress()
        measured = progress["measured"]
        n = int(measured.sum())
        if not analysed:
            # without results the maps stay empty; status, rate and temperature come from the archive
            iy, ix = np.nonzero(measured & ~self.model.copy_maps(("measured",))["measured"])
            if iy.size:
                self.model.update_block(iy, ix, **{k: v[iy, ix] for k, v in progress.items()})
            self.model.update_status(state="unknown", message=f"{n} measured pixels, no analysis yet")
            if self.analyse_callback is not None and not self.loaded.is_set():
                self.analyse_callback(archive, self.model)
        text = f"{archive.name}: {n} of {measured.size} pixels measured; " + (
            f"analysis {self.analysis_path.name}"
            if self.analysis_path
            else "no analysis file yet - showing the measured pixels only (run `stslive analyse`)"
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


def apply_topography(spectra: ArchiveSpectra, model: ResultsModel) -> None:
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
