"""Nanonis point spectra (``.dat``, "bias spectroscopy"): one file, or a set of them read as one line.

Format (checked against the reference file and the public readers nanonispy and SIDAM; see
``docs/formats.md``): ``key<TAB>value<TAB>`` header lines (LF or CRLF), an empty line, ``[DATA]``,
a line of TAB-separated column names, then one TAB-separated row per sweep point. The first
column is the sweep axis as set (``Bias calc (V)``); the other columns are channels named as in
:mod:`~stslive.acquisition.formats.channels` (backward, filtered, averaged and per-sweep copies).
Numbers use ``E`` exponents; ``NaN``, ``Inf`` and ``N/A`` (unknown) occur.

:func:`read_dat` reads one file. :func:`open_dat` opens one file or a folder of them as a
:class:`NanonisPointSet`: N spectra laid out as a 1 x N grid in file-name order, positioned by
their headers' ``X (m)``/``Y (m)``. Evenly spaced points on a straight line (within a tenth of
their spacing) make an exact line geometry (``regular``); any other set keeps its true positions
in ``positions_m`` and a nominal line geometry (spacing = median distance between neighbours in
file order), which correlation lengths must not be read from. The reader has the grid interface
of :class:`~stslive.acquisition.formats.nanonis3ds.NanonisGrid` so analysis and replay take either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from stslive.acquisition.formats.conditions import (
    AmplitudeConvention,
    RecordingConditions,
    conditions_from_header,
    header_number,
)
from stslive.acquisition.formats.nanonis3ds import name_index
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.drivers.errors import ConfigError, NanonisFileError

__all__ = ["DAT_SUFFIX", "NanonisPointSet", "PointSpectrum", "dat_files", "looks_like_dat", "open_dat", "read_dat"]

DAT_SUFFIX = ".dat"
DATA_MARK = "[DATA]"
#: Largest .dat accepted (bytes): a 100 000-point sweep of 50 channels is ~60 MB.
_MAX_BYTES = 256 * 2**20
#: Largest point set accepted (files).
_MAX_FILES = 100_000
#: Nominal cell of a single point or of points that coincide, m (the grid needs a size).
_NOMINAL_CELL_M = 1e-9
#: A sweep column that deviates from a straight line by less than this fraction of its step is
#: that line: Nanonis computes ``Bias calc`` as a linear sweep and prints it to 6 digits.
LINEAR_TOLERANCE = 0.01
#: Per-point parameters read from every header (besides the sweep limits), when numeric.
_POINT_KEYS = ("X (m)", "Y (m)", "Z (m)", "Z offset (m)", "Settling time (s)", "Integration time (s)", "Final Z (m)")


def looks_like_dat(head: bytes) -> bool:
    """Whether the first bytes of a file look like a Nanonis ``.dat``: a ``[DATA]`` line or a TAB-separated header."""
    if DATA_MARK.encode() in head:
        return True
    first = head.split(b"\n", 1)[0]
    return b"\t" in first and not first.startswith(b"\x89HDF")


@dataclass(frozen=True)
class PointSpectrum:
    """One ``.dat`` file.

    Attributes
    ----------
    path : Path
    header : dict of str to str
        Every header entry as text (trailing TABs removed).
    columns : list of str
        Column names; the first is the sweep axis.
    data : ndarray
        ``(n_points, n_columns)`` float64.
    """

    path: Path
    header: dict[str, str]
    columns: list[str]
    data: np.ndarray

    @property
    def sweep_signal(self) -> str:
        return self.columns[0]

    @property
    def channel_names(self) -> list[str]:
        return self.columns[1:]

    @property
    def n_points(self) -> int:
        return int(self.data.shape[0])

    @property
    def sweep(self) -> np.ndarray:
        """The sweep axis ``(n_points,)`` as set, in the sweep signal's unit."""
        return self.data[:, 0]

    def position_m(self) -> tuple[float, float]:
        """``(X, Y)`` from the header, m; NaN where absent."""
        x, y = header_number(self.header, "X (m)"), header_number(self.header, "Y (m)")
        return (math.nan if x is None else x, math.nan if y is None else y)


def _number(text: str, path: Path, line: int) -> float:
    text = text.strip()
    if text in ("", "N/A"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise NanonisFileError(path, f"line {line}: {text[:30]!r} is not a number") from None


def read_dat(path: str | os.PathLike[str]) -> PointSpectrum:
    """Read one Nanonis point spectrum; NanonisFileError on anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise NanonisFileError(path, "no such file; check the path")
    size = path.stat().st_size
    if size > _MAX_BYTES:
        raise NanonisFileError(path, f"{size} bytes: larger than any point spectrum ({_MAX_BYTES} accepted)")
    lines = path.read_bytes().decode("latin-1").splitlines()
    try:
        mark = next(i for i, line in enumerate(lines) if line.strip() == DATA_MARK)
    except StopIteration:
        what = f"no {DATA_MARK} line: not a Nanonis point spectrum (.dat), or cut short"
        raise NanonisFileError(path, what) from None
    header: dict[str, str] = {}
    for line in lines[:mark]:
        if line.strip():
            key, _, value = line.rstrip("\t").partition("\t")
            header[key.strip()] = value.strip()
    body = [(i, line) for i, line in enumerate(lines[mark + 1 :], start=mark + 2) if line.strip()]
    if not body:
        raise NanonisFileError(path, f"no column names after {DATA_MARK}: the file is cut short")
    columns = [c.strip() for c in body[0][1].rstrip("\t").split("\t")]
    if len(columns) < 2 or any(not c for c in columns) or len(set(columns)) != len(columns):
        raise NanonisFileError(path, f"column names {columns}: need a sweep axis and channels, each named once")
    rows = []
    for number, line in body[1:]:
        fields = line.rstrip("\t").split("\t")
        if len(fields) != len(columns):
            raise NanonisFileError(
                path, f"line {number} has {len(fields)} values for {len(columns)} columns: the file is damaged"
            )
        rows.append([_number(f, path, number) for f in fields])
    if len(rows) < 2:
        raise NanonisFileError(path, f"{len(rows)} data row(s): a sweep needs at least 2 points")
    data = np.array(rows, dtype=np.float64)
    if not np.isfinite(data[:, 0]).all():
        raise NanonisFileError(path, f"the sweep axis {columns[0]!r} has values that are not finite numbers")
    return PointSpectrum(path=path, header=header, columns=columns, data=data)


def dat_files(folder: Path) -> list[Path]:
    """The ``.dat`` files of ``folder``, sorted by name (not recursive)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == DAT_SUFFIX)


class NanonisPointSet:
    """Point spectra read as a 1 x N grid; build with :func:`open_dat`.

    Attributes
    ----------
    spectra : list of PointSpectrum
        In file-name order (the order they were saved in, for Nanonis' numbered names).
    header : dict
        The first file's header (``headers`` has each file's).
    positions_m : ndarray
        ``(2, N)`` X and Y of each spectrum, m (NaN where a header lacks them).
    regular : bool
        The points lie evenly spaced on a line and :attr:`geometry` places them exactly.
    """

    def __init__(self, path: Path, spectra: Sequence[PointSpectrum]) -> None:
        if not spectra:
            raise NanonisFileError(path, "no .dat file to read")
        self.path = path
        self.spectra = list(spectra)
        first = self.spectra[0]
        for s in self.spectra[1:]:
            if s.columns != first.columns or s.n_points != first.n_points:
                raise NanonisFileError(
                    s.path,
                    f"columns {s.columns} x {s.n_points} points differ from {first.path.name}'s "
                    f"{first.columns} x {first.n_points}: a point set needs spectra of one kind",
                )
        self.header = dict(first.header)
        self.headers = [s.header for s in self.spectra]
        self.channel_names = first.channel_names
        self.sweep_signal = first.sweep_signal
        self.n_points = first.n_points
        self.nx, self.ny = len(self.spectra), 1
        self.positions_m = np.array([s.position_m() for s in self.spectra], dtype=np.float64).T
        self.geometry, self.regular = _geometry(self.positions_m)
        self._sweeps = np.stack([_as_set(s.sweep) for s in self.spectra])
        self._channels = np.stack([s.data[:, 1:].T for s in self.spectra]).astype(np.float32)  # (N, nch, npts)
        self.measured = np.isfinite(self._channels).any(axis=(1, 2)).reshape(1, self.nx)
        self._parameters = self._collect_parameters()

    def _collect_parameters(self) -> dict[str, np.ndarray]:
        params = {"Sweep Start": self._sweeps[:, 0], "Sweep End": self._sweeps[:, -1]}
        keys = [k for k in self.header if k in _POINT_KEYS or k.lower().startswith("temperature")]
        for key in keys:
            values = np.array([_or_nan(header_number(h, key)) for h in self.headers], dtype=np.float64)
            if np.isfinite(values).any():
                params[key] = values
        return {k: v.reshape(1, self.nx) for k, v in params.items()}

    # the grid interface
    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def is_bias_sweep(self) -> bool:
        return self.sweep_signal.startswith("Bias")

    @property
    def n_missing(self) -> int:
        return int(self.measured.size - np.count_nonzero(self.measured))

    @property
    def parameter_names(self) -> list[str]:
        return list(self._parameters)

    def parameter(self, name: str) -> np.ndarray:
        """One per-point value ``(1, N)`` float64 (NaN where a header lacks it)."""
        name_index(self.parameter_names, name, "parameter", self.path)  # the error lists them
        return self._parameters[name].copy()

    def channel_index(self, name: str) -> int:
        return name_index(self.channel_names, name, "channel", self.path)

    def read_block(self, rows: slice = slice(None), channels: Sequence[str] | None = None) -> np.ndarray:
        """Spectra ``(rows, N, channels, n_points)`` float32."""
        r = range(*rows.indices(self.ny))
        idx = list(range(len(self.channel_names))) if channels is None else [self.channel_index(c) for c in channels]
        block = self._channels[:, idx][None] if len(r) else np.zeros((0, self.nx, len(idx), self.n_points))
        return np.ascontiguousarray(block, dtype=np.float32)

    def sweep_axes(self, rows: slice = slice(None)) -> np.ndarray:
        """Each spectrum's own sweep axis ``(rows, N, n_points)`` float64 (the file's first column)."""
        r = range(*rows.indices(self.ny))
        return self._sweeps[None].copy() if len(r) else np.zeros((0, self.nx, self.n_points))

    def sweep_varies(self) -> bool:
        """Whether the measured spectra's sweep axes differ (each file has its own column)."""
        axes = self.sweep_axes()[self.measured]
        return bool(axes.size) and bool(np.ptp(axes, axis=0).max() > 0)

    def nominal_sweep(self) -> np.ndarray:
        """The first spectrum's sweep axis."""
        return self._sweeps[0].copy()

    def iter_blocks(self, rows: int = 16, channels: Sequence[str] | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        yield slice(0, 1), self.read_block(slice(0, 1), channels)

    def conditions(self, *, amplitude_convention: AmplitudeConvention | None = None) -> RecordingConditions:
        """Temperature, modulation and bias wiring from the headers (:func:`conditions_from_header`)."""
        return conditions_from_header(
            self.header, parameters=self._parameters, amplitude_convention=amplitude_convention
        )

    def close(self) -> None:
        """Nothing to release: the spectra are read whole at open."""

    def __enter__(self) -> NanonisPointSet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _as_set(sweep: np.ndarray) -> np.ndarray:
    """The sweep as the controller set it: the straight line the printed column rounds, when it is one
    (:data:`LINEAR_TOLERANCE`); else the column itself (a multi-segment sweep)."""
    line = np.linspace(sweep[0], sweep[-1], sweep.size)
    step = abs(float(sweep[-1] - sweep[0])) / (sweep.size - 1)
    return line if step > 0 and np.abs(sweep - line).max() <= LINEAR_TOLERANCE * step else sweep.copy()


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _geometry(positions: np.ndarray) -> tuple[GridGeometry, bool]:
    """The line geometry of points ``(2, N)`` and whether it places every point exactly (module docstring)."""
    n = positions.shape[1]
    finite = np.isfinite(positions).all()
    centre = np.array([float(np.nanmean(p)) if np.isfinite(p).any() else 0.0 for p in positions])
    regular = False
    step, angle = _NOMINAL_CELL_M, 0.0
    if n >= 2 and finite:
        gaps = np.hypot(*np.diff(positions, axis=1))
        span = positions[:, -1] - positions[:, 0]
        line_step = float(np.hypot(*span)) / (n - 1)
        if line_step > 0:
            ideal = positions[:, :1] + span[:, None] * np.arange(n) / (n - 1)
            regular = bool(np.hypot(*(positions - ideal)).max() <= 0.1 * line_step)
        if regular:
            step, angle = line_step, math.degrees(math.atan2(span[1], span[0]))
            centre = positions[:, 0] + span / 2
        elif np.median(gaps) > 0:
            step = float(np.median(gaps))
    try:
        geometry = GridGeometry(
            centre_x_m=float(centre[0]),
            centre_y_m=float(centre[1]),
            width_m=n * step,
            height_m=step,
            nx=n,
            ny=1,
            angle_deg=angle,
        )
    except ConfigError:  # positions far outside any scan range: keep the set, place it nominally
        geometry = GridGeometry(0.0, 0.0, n * _NOMINAL_CELL_M, _NOMINAL_CELL_M, n, 1)
        regular = False
    return geometry, regular


def open_dat(path: str | os.PathLike[str]) -> NanonisPointSet:
    """Open a ``.dat`` file, or a folder of them, as a :class:`NanonisPointSet`.

    Raises
    ------
    NanonisFileError
        No such file or folder, a folder without ``.dat`` files, a malformed file, or files of
        different columns or lengths in one folder.
    """
    path = Path(path)
    if path.is_dir():
        files = dat_files(path)
        if not files:
            raise NanonisFileError(path, "a folder without .dat files; give a folder of Nanonis point spectra")
        if len(files) > _MAX_FILES:
            raise NanonisFileError(path, f"{len(files)} .dat files; at most {_MAX_FILES} make one point set")
        return NanonisPointSet(path, [read_dat(f) for f in files])
    return NanonisPointSet(path, [read_dat(path)])
