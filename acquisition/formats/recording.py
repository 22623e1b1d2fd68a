"""Input recordings, whatever wrote them: stslive run archives, Nanonis ``.3ds`` grids and ``.dat`` spectra.

Contract: :func:`recording_kind` is the one rule that tells them apart, by content, never by the
file name (HDF5 signature -> stslive archive; a ``:HEADER_END:`` header -> ``.3ds``; a ``[DATA]``
section or TAB-separated header -> ``.dat``; a folder -> its ``.dat`` files as one point set);
:func:`open_recording` opens the format's reader, and :func:`open_spectra` gives the format-free
view the offline analysis reads (:class:`SpectraSource`). Channels are picked by the one rule of
:func:`~stslive.acquisition.formats.channels.pick_channels`. Every reader answers
``conditions()`` (:class:`~stslive.acquisition.formats.conditions.RecordingConditions`).
A recording's start document is :func:`~stslive.acquisition.formats.start_document.start_fields`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeAlias

import h5py
import numpy as np

from stslive.acquisition.formats.archive import VERSION_ATTR, ArchiveReader, open_archive
from stslive.acquisition.formats.archive.layout import HDF5_SIGNATURE
from stslive.acquisition.formats.channels import pick_channels
from stslive.acquisition.formats.conditions import AmplitudeConvention, RecordingConditions, check_convention
from stslive.acquisition.formats.nanonis3ds import HEADER_END, NanonisGrid, open_3ds
from stslive.acquisition.formats.nanonis_dat import NanonisPointSet, dat_files, looks_like_dat, open_dat
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.acquisition.formats.sweeps import Resampler, is_uniform
from stslive.drivers.errors import AnalysisError, FileFormatError, NanonisFileError

#: A recording opened by :func:`open_recording`: the format's own reader.
Recording: TypeAlias = ArchiveReader | NanonisGrid | NanonisPointSet
RecordingKind: TypeAlias = Literal["stslive", "nanonis3ds", "nanonis-dat"]
#: Bytes read to tell a file's kind (a .3ds header is a few kB).
_SNIFF_BYTES = 1 << 16


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


def kind_of(recording: Recording) -> RecordingKind:
    """The :data:`RecordingKind` of an opened recording."""
    if isinstance(recording, ArchiveReader):
        return "stslive"
    return "nanonis3ds" if isinstance(recording, NanonisGrid) else "nanonis-dat"


class SpectraSource:
    """Read-only spectra of one recording; build with :func:`open_spectra`.

    ``amplitude_convention`` says how a Nanonis file's ``Lock-in>Amplitude`` is meant ("peak" or
    "rms"; None: unknown), for :attr:`conditions`. A sweep that is not uniform (MLS) and shared by
    every pixel is resampled onto a uniform grid (:class:`~stslive.acquisition.formats.sweeps.Resampler`):
    :attr:`bias`, :attr:`n_points` and the spectra are then on that grid, and
    :attr:`resampled_from` holds the recorded number of points.
    """

    def __init__(
        self,
        path: Path,
        backend: Recording,
        *,
        current: str | None,
        lockin: str | None,
        amplitude_convention: AmplitudeConvention | None = None,
    ) -> None:
        self.path = path
        self._b = backend
        self.kind: RecordingKind = kind_of(backend)
        self.amplitude_convention = check_convention(amplitude_convention)
        self.channel_names: list[str] = list(backend.channel_names)
        try:
            pick = pick_channels(self.channel_names, current=current, lockin=lockin)
        except AnalysisError as exc:
            raise AnalysisError(f"{path}: {exc}") from None
        if pick.current is None:
            raise AnalysisError(
                f"{path}: no channel named 'Current ...' among {self.channel_names}; name the current with current=NAME"
            )
        self.current_channel: str = self.channel_names[pick.current]
        self.lockin_channel: str | None = None if pick.lockin is None else self.channel_names[pick.lockin]
        if isinstance(backend, ArchiveReader):
            self.sweep_signal = "Bias (V)"
            self._start, self._end = self._archive_sweeps(backend)
        else:
            self.sweep_signal = backend.sweep_signal
            self._start, self._end = backend.parameter("Sweep Start"), backend.parameter("Sweep End")
        if isinstance(backend, ArchiveReader):
            done = self.measured
            starts, ends = self._start[done], self._end[done]
            self.bias_per_pixel = bool(starts.size) and bool(np.ptp(starts) > 0 or np.ptp(ends) > 0)
        else:
            self.bias_per_pixel = backend.sweep_varies()
        self._resampler: Resampler | None = None
        nominal = backend.bias if isinstance(backend, ArchiveReader) else backend.nominal_sweep()
        if not is_uniform(nominal):
            if self.bias_per_pixel:
                raise AnalysisError(f"{path}: the pixels' sweeps differ and are not uniform; nothing can share them")
            self._resampler = Resampler(nominal)
        #: points of the recorded sweep when it was resampled onto a uniform grid, else None
        self.resampled_from: int | None = None if self._resampler is None else int(nominal.size)

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
        return int(self._b.n_points) if self._resampler is None else int(self._resampler.target.size)

    @property
    def pixel_size_m(self) -> tuple[float, float]:
        return self.geometry.pixel_size_m

    @property
    def measured(self) -> np.ndarray:
        return np.asarray(self._b.measured, dtype=bool)

    @property
    def bias(self) -> np.ndarray:
        """Nominal sweep axis ``(n_points,)`` (the first measured pixel's for a Nanonis file)."""
        if self._resampler is not None:
            return self._resampler.target.copy()
        if isinstance(self._b, ArchiveReader):
            return self._b.bias
        return self._b.nominal_sweep()

    @property
    def damage(self) -> str:
        """What of the file is lost (a truncated archive: bytes and pixels that survive), "" when whole."""
        return self._b.health.describe() if isinstance(self._b, ArchiveReader) else ""

    @property
    def conditions(self) -> RecordingConditions:
        """Temperature, modulation and bias wiring the recording states (None where it does not)."""
        return self._b.conditions(amplitude_convention=self.amplitude_convention)

    @property
    def positions_m(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of every pixel, ``(ny, nx)`` each, m: recorded positions of a point set, else the grid's."""
        if isinstance(self._b, NanonisPointSet):
            return self._b.positions_m[0][None].copy(), self._b.positions_m[1][None].copy()
        x, y = self.geometry.pixel_xy(*np.indices(self.shape))
        return np.asarray(x), np.asarray(y)

    @property
    def regular_grid(self) -> bool:
        """Whether :attr:`geometry` places every pixel where it was measured (False: a hand-placed point set)."""
        return not isinstance(self._b, NanonisPointSet) or self._b.regular

    @property
    def sweep_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """``(start, end)`` of each pixel's sweep, ``(ny, nx)`` arrays, V."""
        return self._start, self._end

    def acquisition_order(self) -> np.ndarray:
        """Flat indices of the measured pixels in measurement order (:func:`acquisition_order`).

        An archive orders by the pixels' ``t_start``; a Nanonis file has no per-pixel times and is
        taken row-major (Nanonis grids are measured that way; point sets in file-name order).
        """
        times = self._b.pixel_meta["t_start"] if isinstance(self._b, ArchiveReader) else None
        return acquisition_order(self.measured, times)

    def bias_for(self, rows: slice) -> np.ndarray:
        """Per-pixel sweep axes ``(rows, nx, n_points)`` (float64)."""
        if self._resampler is not None:
            n_rows = len(range(*rows.indices(self.shape[0])))
            return np.broadcast_to(self._resampler.target, (n_rows, self.shape[1], self.n_points)).copy()
        if not isinstance(self._b, ArchiveReader):
            return self._b.sweep_axes(rows)
        # np.linspace per pixel: bit for bit the axis of its set-point set (SetpointSet.bias_axis)
        return np.linspace(self._start[rows], self._end[rows], self.n_points, axis=-1)

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
        if self._resampler is not None:
            data = self._resampler(data)
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
    """What a path holds, told by content (module docstring).

    Raises
    ------
    FileFormatError
        No such file or folder, a folder without ``.dat`` files, or content of no known kind.
    """
    path = Path(path)
    if path.is_dir():
        if not dat_files(path):
            raise NanonisFileError(
                path, "a folder without .dat files; give an archive, a .3ds or .dat file, or a folder of .dat files"
            )
        return "nanonis-dat"
    if not path.is_file():
        raise FileFormatError(
            path, "no such file; give an stslive archive (.h5), a Nanonis grid (.3ds) or spectrum (.dat)"
        )
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if head.startswith(HDF5_SIGNATURE):
        return "stslive"
    if HEADER_END.rstrip() in head or head.startswith(b"Grid dim"):
        return "nanonis3ds"
    if looks_like_dat(head):
        return "nanonis-dat"
    raise NanonisFileError(
        path,
        "neither an stslive archive (HDF5) nor a Nanonis grid (.3ds: no ':HEADER_END:') "
        "nor a Nanonis point spectrum (.dat: no [DATA] section)",
    )


def open_recording(path: str | os.PathLike[str], *, swmr: bool | Literal["auto"] = "auto") -> Recording:
    """Open a recording with its format's reader, as :func:`recording_kind` says: an stslive archive
    (:func:`open_archive`, with ``swmr``), a Nanonis ``.3ds`` grid (:func:`open_3ds`) or Nanonis
    point spectra (:func:`~stslive.acquisition.formats.nanonis_dat.open_dat`: a ``.dat`` or a folder).

    Raises
    ------
    FileFormatError
        No such file, or the format's reader refuses it (ArchiveError or NanonisFileError).
    """
    kind = recording_kind(path)
    if kind == "stslive":
        return open_archive(path, swmr=swmr)
    return open_3ds(path) if kind == "nanonis3ds" else open_dat(path)


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
    path: str | os.PathLike[str],
    *,
    current: str | None = None,
    lockin: str | None = None,
    amplitude_convention: AmplitudeConvention | None = None,
) -> SpectraSource:
    """Open a recording (:func:`open_recording`) as a :class:`SpectraSource`.

    Unknown channel names raise AnalysisError listing the channels; unreadable files raise the
    format's FileFormatError (ArchiveError or NanonisFileError).
    """
    backend = open_recording(path)
    try:
        return SpectraSource(
            Path(path), backend, current=current, lockin=lockin, amplitude_convention=amplitude_convention
        )
    except BaseException:
        backend.close()
        raise
