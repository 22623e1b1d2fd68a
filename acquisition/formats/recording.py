"""Input recordings, whatever wrote them: stslive run archives and Nanonis ``.3ds`` grids.

Contract: :func:`open_recording` is the one rule that tells them apart (HDF5 signature ->
stslive archive, anything else -> ``.3ds``, by content, never by the file name) and opens the
format's reader; :func:`open_spectra` gives the format-free view the offline analysis reads
(:class:`SpectraSource`). Channels are picked by name: the current (default: the first
"Current" channel that is not a backward sweep) and, optionally, a lock-in dI/dV channel
(default: the first of the usual Nanonis and external lock-in names present). :func:`start_fields`
is a recording's start document: an archive's own, a ``.3ds`` grid's built from its header.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias

import h5py
import numpy as np

from stslive.acquisition.formats.archive import VERSION_ATTR, ArchiveReader, open_archive
from stslive.acquisition.formats.archive.layout import HDF5_SIGNATURE
from stslive.acquisition.formats.nanonis3ds import NanonisGrid, open_3ds
from stslive.acquisition.formats.runmodel import GridGeometry, SetpointSet, channel_unit
from stslive.drivers.errors import AnalysisError, ConfigError, FileFormatError, NanonisFileError

#: A recording opened by :func:`open_recording`: the format's own reader.
Recording: TypeAlias = ArchiveReader | NanonisGrid
RecordingKind: TypeAlias = Literal["stslive", "nanonis3ds"]
#: Lock-in channel names tried in order when none is given.
LOCKIN_CANDIDATES: tuple[str, ...] = ("LI Demod 1 X (A)", "LIX 1 omega (A)", "Lock-in X (A)", "Input 2 (V)")


@dataclass(frozen=True)
class SpectraBlock:
    """A block of grid rows.

    Attributes
    ----------
    rows : slice
        Grid rows covered.
    current : ndarray
        ``(rows, nx, n_points)`` float32, A (NaN where unmeasured).
    lockin : ndarray or None
        ``(rows, nx, n_points)`` float32 in the channel's unit, or None.
    measured : ndarray
        ``(rows, nx)`` bool.
    bias : ndarray
        ``(n_points,)`` when every pixel shares the sweep, else ``(rows, nx, n_points)`` (V).
    """

    rows: slice
    current: np.ndarray
    lockin: np.ndarray | None
    measured: np.ndarray
    bias: np.ndarray


#: :attr:`SpectraSource.topography_origin` values (also shown in the viewer's panel title).
TOPO_FROM_FILE = "stored topography"
TOPO_FROM_Z = "tip height z at the set-point, plane removed"
#: Relief (peak-to-peak after the plane) below which z counts as held, m: far under any piezo's
#: resolution (~1 pm), far over float32 rounding of a constant z of ~10 nm (~1e-15 m).
Z_RELIEF_MIN_M = 1e-13


def topography_from_z(z_m: np.ndarray, *, set_ids: np.ndarray | None = None) -> np.ndarray | None:
    """Constant-current topography from the tip height recorded at each pixel's set-point.

    With the feedback on at the spectroscopy set-point (I_set, V_set) the tip height z(r) is a
    constant-current image, i.e. the topography. The raw heights carry the sample/piezo tilt,
    a plane that dwarfs the grain relief of a few 0.1 nm over tens of nm, and one offset per
    set-point set (z = z_topo + ln(I_0 / I_set) / 2 kappa shifts with I_set). The model fitted
    by least squares over the finite pixels is

        z(x, y) = a x + b y + c_s    (s = the pixel's set-point set)

    and the residual z - a x - b y - c_s is returned. A one-row partial map is rank deficient
    (y constant); ``numpy.linalg.lstsq`` still returns the unique least-squares residual.

    Parameters
    ----------
    z_m : ndarray
        ``(ny, nx)`` tip heights, m; NaN where not measured or not read.
    set_ids : ndarray, optional
        ``(ny, nx)`` set-point set id per pixel; None = one set.

    Returns
    -------
    ndarray or None
        ``(ny, nx)`` float32 topography, m (NaN where ``z_m`` is); None when no height is finite
        or the residual spans less than :data:`Z_RELIEF_MIN_M` (Z was held, e.g. a constant-height
        or AFM grid: a flat map is no topography and would make its correlations 0/0).
    """
    z = np.asarray(z_m, dtype=np.float64)
    if z.ndim != 2:
        raise AnalysisError(f"tip-height map must be 2D (ny, nx), got shape {z.shape}")
    ok = np.isfinite(z)
    if not ok.any():
        return None
    iy, ix = np.nonzero(ok)
    groups = np.zeros(iy.size, dtype=np.int64) if set_ids is None else np.asarray(set_ids)[ok]
    _, group_index = np.unique(groups, return_inverse=True)
    offsets = np.zeros((iy.size, int(group_index.max()) + 1))
    offsets[np.arange(iy.size), group_index] = 1.0
    design = np.column_stack([ix, iy, offsets]).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, z[ok], rcond=None)
    residual = z[ok] - design @ coef
    if np.ptp(residual) < Z_RELIEF_MIN_M:
        return None  # z held constant (constant-height grid, Z-controller on hold): no relief recorded
    out = np.full(z.shape, np.nan, dtype=np.float32)
    out[ok] = residual
    return out


def acquisition_order(measured: np.ndarray, t_start: np.ndarray | None = None) -> np.ndarray:
    """Flat (row-major) indices of the measured pixels in the order they were measured.

    Parameters
    ----------
    measured : ndarray
        ``(ny, nx)`` bool.
    t_start : ndarray, optional
        ``(ny, nx)`` start time of each pixel's measurement, s (archive pixel metadata); None
        (a ``.3ds``, no per-pixel times) gives row-major order.

    Returns
    -------
    ndarray of int64
        Measured pixels sorted by ``t_start``; the sort is stable, so equal times keep
        row-major order, and pixels without a finite time come last in row-major order. This is
        the order the live analyser receives them in (a serpentine scan reverses every other row).
    """
    flat = np.flatnonzero(np.asarray(measured, dtype=bool).ravel())
    if t_start is None:
        return flat.astype(np.int64)
    t = np.asarray(t_start, dtype=np.float64).ravel()[flat]
    key = np.where(np.isfinite(t), t, np.inf)
    return flat[np.argsort(key, kind="stable")].astype(np.int64)


def _pick(names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str | None:
    if wanted is not None:
        if wanted not in names:
            raise AnalysisError(f"{path}: no {what} channel {wanted!r}; channels are {names}")
        return wanted
    return next((c for c in candidates if c in names), None)


class SpectraSource:
    """Read-only spectra of one file; build with :func:`open_spectra`."""

    def __init__(self, path: Path, backend: Recording, *, current: str | None, lockin: str | None) -> None:
        self.path = path
        self._b = backend
        self.kind = "stslive" if isinstance(backend, ArchiveReader) else "nanonis3ds"
        self.channel_names: list[str] = list(backend.channel_names)
        currents = tuple(n for n in self.channel_names if n.startswith("Current") and "[bwd]" not in n)
        picked = _pick(self.channel_names, current, currents, "current", path)
        if picked is None:
            raise AnalysisError(f"{path}: no current channel among {self.channel_names}; pass current=NAME")
        self.current_channel: str = picked
        self.lockin_channel: str | None = _pick(self.channel_names, lockin, LOCKIN_CANDIDATES, "lock-in", path)
        if isinstance(backend, ArchiveReader):
            self.sweep_signal = "Bias (V)"
            self._start, self._end = self._archive_sweeps(backend)
        else:
            self.sweep_signal = backend.sweep_signal
            self._start, self._end = backend.parameter("Sweep Start"), backend.parameter("Sweep End")
        done = self.measured
        starts, ends = self._start[done], self._end[done]
        self.bias_per_pixel = bool(starts.size) and bool(np.ptp(starts) > 0 or np.ptp(ends) > 0)

    @staticmethod
    def _archive_sweeps(ar: ArchiveReader) -> tuple[np.ndarray, np.ndarray]:
        ids = ar.pixel_meta["setpoint_set_id"]
        start = np.full(ids.shape, ar.bias[0])
        end = np.full(ids.shape, ar.bias[-1])
        for sid, s in ar.setpoint_sets.items():
            start[ids == sid], end[ids == sid] = s.sweep_start_V, s.sweep_end_V
        return start, end

    # description
    @property
    def is_bias_sweep(self) -> bool:
        return self.sweep_signal.startswith("Bias")

    def require_bias_sweep(self) -> None:
        """AnalysisError unless the sweep is the bias (a Z or other sweep cannot give Delta, alpha)."""
        if not self.is_bias_sweep:
            raise AnalysisError(
                f"{self.path}: the sweep signal is {self.sweep_signal!r}, not the bias; "
                "gap and AA-exponent analysis needs bias spectroscopy"
            )

    @property
    def geometry(self) -> GridGeometry:
        return self._b.geometry

    @property
    def shape(self) -> tuple[int, int]:
        return self.geometry.shape

    @property
    def n_points(self) -> int:
        return int(self._b.n_points)

    @property
    def pixel_size_m(self) -> tuple[float, float]:
        return self.geometry.pixel_size_m

    @property
    def measured(self) -> np.ndarray:
        return np.asarray(self._b.measured, dtype=bool)

    @property
    def bias(self) -> np.ndarray:
        """Nominal sweep axis ``(n_points,)`` (the first measured pixel's for a .3ds)."""
        if isinstance(self._b, ArchiveReader):
            return self._b.bias
        return self._b.nominal_sweep()

    @property
    def sweep_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """``(start, end)`` of each pixel's sweep, ``(ny, nx)`` arrays, V."""
        return self._start, self._end

    def acquisition_order(self) -> np.ndarray:
        """Flat indices of the measured pixels in measurement order (:func:`acquisition_order`).

        An archive orders by the pixels' ``t_start``; a ``.3ds`` has no per-pixel times and is
        taken row-major (Nanonis grids are measured that way).
        """
        times = self._b.pixel_meta["t_start"] if isinstance(self._b, ArchiveReader) else None
        return acquisition_order(self.measured, times)

    def bias_for(self, rows: slice) -> np.ndarray:
        """Per-pixel sweep axes ``(rows, nx, n_points)`` (float64)."""
        frac = np.linspace(0.0, 1.0, self.n_points)
        s, e = self._start[rows, :, None], self._end[rows, :, None]
        return s + (e - s) * frac

    @property
    def topography(self) -> np.ndarray | None:
        """Topography (m): the file's own map, else the measured tip heights; None when neither exists.

        Rule (see :func:`topography_from_z`): an archive's ``/entry/sample/topography`` wins;
        without it the per-pixel tip height ``z_m`` (archive pixel metadata, or the ``Z (m)``
        parameter of a .3ds) with its least-squares plane removed is the topography.
        :attr:`topography_origin` says which one was used.
        """
        return self._topography()[0]

    @property
    def topography_origin(self) -> str:
        """Where :attr:`topography` comes from (:data:`TOPO_FROM_FILE`, :data:`TOPO_FROM_Z`), "" if none."""
        return self._topography()[1]

    def _topography(self) -> tuple[np.ndarray | None, str]:
        if isinstance(self._b, ArchiveReader):
            stored = self._b.topography
            if stored is not None:
                return stored, TOPO_FROM_FILE
            meta = self._b.pixel_meta
            z, sets = meta["z_m"], meta["setpoint_set_id"]
        elif "Z (m)" in self._b.parameter_names:
            z, sets = self._b.parameter("Z (m)"), None
        else:
            return None, ""
        topo = topography_from_z(np.where(self.measured, z, np.nan), set_ids=sets)
        return (None, "") if topo is None else (topo, TOPO_FROM_Z)

    @property
    def ground_truth(self) -> dict[str, np.ndarray] | None:
        """Simulation ground truth maps, None when the file has none."""
        if isinstance(self._b, ArchiveReader):
            return self._b.ground_truth or None
        return None

    # data
    def read_block(self, rows: slice) -> SpectraBlock:
        """Current (and lock-in) spectra of grid rows ``rows``."""
        names = [self.current_channel] + ([self.lockin_channel] if self.lockin_channel else [])
        data = (
            self._b.read_pixels(rows, slice(None), names)
            if isinstance(self._b, ArchiveReader)
            else self._b.read_block(rows, names)
        )
        bias = self.bias_for(rows) if self.bias_per_pixel else self.bias
        return SpectraBlock(
            rows=rows,
            current=data[:, :, 0],
            lockin=data[:, :, 1] if self.lockin_channel else None,
            measured=self.measured[rows],
            bias=bias,
        )

    def iter_blocks(self, *, max_bytes: int = 64 * 2**20) -> Iterator[SpectraBlock]:
        """Blocks of whole rows, each of at most ``max_bytes`` of spectra (at least one row)."""
        per_row = self.shape[1] * self.n_points * 4 * (2 if self.lockin_channel else 1)
        step = max(1, int(max_bytes // per_row))
        for start in range(0, self.shape[0], step):
            yield self.read_block(slice(start, min(self.shape[0], start + step)))

    def close(self) -> None:
        self._b.close()

    def __enter__(self) -> SpectraSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def recording_kind(path: str | os.PathLike[str]) -> RecordingKind:
    """``"stslive"`` for a file with the HDF5 signature, ``"nanonis3ds"`` for anything else.

    Raises
    ------
    FileFormatError
        No such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(path, "no such file; give an stslive archive (.h5) or a Nanonis grid (.3ds)")
    with open(path, "rb") as fh:
        return "stslive" if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE else "nanonis3ds"


def open_recording(path: str | os.PathLike[str], *, swmr: bool | Literal["auto"] = "auto") -> Recording:
    """Open an stslive archive (:func:`open_archive`, with ``swmr``) or a Nanonis ``.3ds`` grid
    (:func:`open_3ds`), as :func:`recording_kind` says.

    Raises
    ------
    FileFormatError
        No such file, or the format's reader refuses it (ArchiveError or NanonisFileError).
    """
    return open_archive(path, swmr=swmr) if recording_kind(path) == "stslive" else open_3ds(path)


def is_other_hdf5(path: str | os.PathLike[str]) -> bool:
    """True for a readable HDF5 file that is not an stslive archive (an analysis ``maps.h5``, say).

    A file too damaged to open is not "other": as an input, its analysis reports the damage.
    """
    try:
        with h5py.File(path, "r", locking=False) as f:
            return VERSION_ATTR not in f.attrs
    except OSError:
        return False


def open_spectra(
    path: str | os.PathLike[str], *, current: str | None = None, lockin: str | None = None
) -> SpectraSource:
    """Open a recording (:func:`open_recording`) as a :class:`SpectraSource`.

    Unknown channel names raise AnalysisError listing the channels; unreadable files raise the
    format's FileFormatError (ArchiveError or NanonisFileError).
    """
    backend = open_recording(path)
    try:
        return SpectraSource(Path(path), backend, current=current, lockin=lockin)
    except BaseException:
        backend.close()
        raise


# -- start documents -------------------------------------------------------------------------------
#: ``setpoint_source`` value of a set-point set field the ``.3ds`` header does not give
_ABSENT = "absent from the header: default"
#: Event fields a ``.3ds`` does not record (its events carry the defaults)
_GRID_EVENT_UNKNOWNS = ("lockin_status", "lockin_overload")


def _header_float(header: Mapping[str, str], key: str, path: Path) -> float:
    try:
        return float(header[key])
    except ValueError:
        raise NanonisFileError(path, f"header entry {key!r}={header[key]!r} is not a number") from None


def setpoint_set_from_3ds(grid: NanonisGrid) -> tuple[dict[str, Any], dict[str, str]]:
    """The set-point set of a ``.3ds`` grid, built from its header; and where each value came from.

    Nanonis keys used: ``Bias>Bias (V)`` (bias set-point); ``Z-Controller>Setpoint`` when its
    unit is A, else ``Current>Current (A)`` (the current when the grid started) for the current
    set-point; ``Bias Spectroscopy>Sweep Start/End (V)`` for a bias sweep, else the first
    measured point's Sweep Start/End parameters (the sweep signal's unit); ``Points``;
    ``Bias Spectroscopy>Settling time (s)``, ``>Integration time (s)``, ``>Z-controller hold``;
    ``Lock-in>Frequency (Hz)`` and ``Lock-in>Amplitude`` when the lock-in ran during the sweep.
    Nanonis gives the modulation amplitude as zero-to-peak; it is stored as
    ``lockin_amplitude_Vrms = amplitude / sqrt(2)``. Absent optional keys leave the
    :class:`SetpointSet` default, and the returned sources say so.

    Raises
    ------
    NanonisFileError
        A header number that does not parse, or (bias sweeps) values no set-point set allows.
    """
    h, path = grid.header, grid.path
    values: dict[str, Any] = {"id": 0, "name": "from .3ds header", "n_points": int(grid.n_points)}
    sources: dict[str, str] = {"n_points": "Points"}

    def take(field_name: str, *keys: str, scale: float = 1.0) -> None:
        for key in keys:
            if key in h:
                values[field_name] = _header_float(h, key, path) * scale
                sources[field_name] = key
                return
        sources[field_name] = _ABSENT

    take("bias_setpoint_V", "Bias>Bias (V)")
    current_keys = (("Z-Controller>Setpoint",) if h.get("Z-Controller>Setpoint unit") == "A" else ()) + (
        "Current>Current (A)",
    )
    take("current_setpoint_A", *current_keys)
    take("settle_s", "Bias Spectroscopy>Settling time (s)")
    take("integration_s", "Bias Spectroscopy>Integration time (s)")
    if grid.is_bias_sweep and "Bias Spectroscopy>Sweep Start (V)" in h and "Bias Spectroscopy>Sweep End (V)" in h:
        take("sweep_start_V", "Bias Spectroscopy>Sweep Start (V)")
        take("sweep_end_V", "Bias Spectroscopy>Sweep End (V)")
    else:
        sweep = grid.nominal_sweep()
        values["sweep_start_V"], values["sweep_end_V"] = float(sweep[0]), float(sweep[-1])
        sources["sweep_start_V"] = sources["sweep_end_V"] = (
            f"first measured point's Sweep Start/End ({grid.sweep_signal})"
        )
    if "Bias Spectroscopy>Z-controller hold" in h:
        values["feedback_hold"] = h["Bias Spectroscopy>Z-controller hold"].strip().upper() == "TRUE"
        sources["feedback_hold"] = "Bias Spectroscopy>Z-controller hold"
    if h.get("Bias Spectroscopy>Lock-In run", "").strip().upper() == "TRUE":
        take("lockin_frequency_Hz", "Lock-in>Frequency (Hz)")
        take("lockin_amplitude_Vrms", "Lock-in>Amplitude", scale=1 / math.sqrt(2))
    else:
        sources["lockin"] = "lock-in not run during the sweep: amplitude 0"
    missing = [k for k in ("bias_setpoint_V", "current_setpoint_A") if k not in values]
    if grid.is_bias_sweep:
        if missing:
            raise NanonisFileError(
                path,
                f"header lacks the set-point value(s) {missing} needed to replay a bias "
                "grid (Bias>Bias (V), Current>Current (A))",
            )
        try:
            values = SetpointSet.from_dict(values).to_dict()
        except ConfigError as exc:
            raise NanonisFileError(path, f"the header's set-point values do not make a set-point set: {exc}") from exc
    return values, sources


def start_fields(recording: Recording) -> dict[str, Any]:
    """The start-document fields of a recording (:meth:`RunPublisher.start` keywords, no uid).

    An archive's are its own record (:meth:`ArchiveReader.start_document`). A ``.3ds`` stores no
    stslive set-point set: one is built from its header (:func:`setpoint_set_from_3ds`) and
    ``metadata["setpoint_source"]`` names where each of its values came from; a set field it does
    not name as a header key is not known. ``metadata["not_recorded"]`` lists those fields and
    the event fields a ``.3ds`` does not hold (the values sent are defaults, not measurements).
    For a sweep that is not the bias the set is not validated (``metadata["sweep_signal"]``).
    """
    if isinstance(recording, ArchiveReader):
        return recording.start_document().body()
    grid = recording
    sp, sources = setpoint_set_from_3ds(grid)
    starts, ends = grid.parameter("Sweep Start"), grid.parameter("Sweep End")
    done = grid.measured
    varies = bool(done.any()) and bool(np.ptp(starts[done]) > 0 or np.ptp(ends[done]) > 0)
    names = list(grid.channel_names)
    known = {k for k, v in sources.items() if v != _ABSENT} | {"id", "name"}
    if "lockin" in sources:  # the lock-in did not run: amplitude 0 is what was applied
        known.add("lockin_amplitude_Vrms")
    not_recorded = [f.name for f in dataclasses.fields(SetpointSet) if f.name not in known]
    return {
        "grid": grid.geometry.to_dict(),
        "channel_names": names,
        "channel_units": [channel_unit(n) for n in names],
        "n_points": int(grid.n_points),
        "setpoint_sets": [sp],
        "instruments": {"stm": "Nanonis (from .3ds file)"},
        "software_version": grid.header.get("NanonisMain>SW Version", "unknown"),
        "metadata": {
            "source_kind": "nanonis3ds",
            "sweep_signal": grid.sweep_signal,
            "setpoint_source": {"note": "built from the .3ds header; the file stores no set-point set", **sources},
            "not_recorded": [*not_recorded, *_GRID_EVENT_UNKNOWNS],
            "sweep_limits_vary_per_point": varies,
            "header_start_time": grid.header.get("Start time", ""),
            "header_end_time": grid.header.get("End time", ""),
        },
    }
