"""Nanonis grid spectroscopy files (``.3ds``, "Linear" and multi-segment "MLS" sweeps): read and write.

Format (checked against the reference files and the public readers nanonispy, SpmGrids.jl and
SIDAM): an ASCII header of ``key=value`` lines (CRLF) ending with ``:HEADER_END:`` + CRLF, then
one record per grid point, row after row (x fastest), each record big-endian float32: the
parameters (fixed first: "Sweep Start", "Sweep End"; then the experiment parameters), then
every channel's ``Points`` values in header order. "Grid dim" is ``"nx x ny"``; "Grid settings"
is ``centre x; centre y; width; height; angle`` in m and degrees. A grid stopped early simply
ends; points never reached (missing records, or records of NaN or zeros) read as NaN. An MLS
sweep is the concatenation of the header's segments (:func:`mls_axis`), the same for every point.

The data region is memory-mapped, so blocks of rows are converted on demand and a file larger
than memory can be analysed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from stslive.acquisition.formats.conditions import AmplitudeConvention, RecordingConditions, conditions_from_header
from stslive.acquisition.formats.nanonis3ds_write import HEADER_END, MLS_SEGMENT_KEY, export_archive, write_3ds
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.drivers.errors import NanonisFileError

__all__ = [
    "HEADER_END",
    "MLS_KEYS",
    "GridSettings",
    "NanonisGrid",
    "export_archive",
    "mls_axis",
    "mls_segments",
    "name_index",
    "open_3ds",
    "parse_header",
    "write_3ds",
]

_MAX_HEADER = 1 << 20
#: Largest grid accepted (points); 4096 x 4096, far beyond any real STM grid.
_MAX_GRID_POINTS = 1 << 24
_REQUIRED_KEYS = (
    "Grid dim",
    "Grid settings",
    "Filetype",
    "Sweep Signal",
    "Fixed parameters",
    "Experiment parameters",
    "# Parameters (4 byte)",
    "Points",
    "Channels",
)


#: Header keys of the MLS segment table: the grid's own, then the spectroscopy module's copy.
MLS_KEYS = (MLS_SEGMENT_KEY.split(",")[0], "Bias Spectroscopy>MultiLine Settings : Segment Start (V)")


def _split_list(value: str) -> list[str]:
    return [item for item in value.strip('"').split(";") if item]


def name_index(names: Sequence[str], name: str, what: str, path: Path) -> int:
    """Position of ``name`` in ``names``; NanonisFileError listing them when absent."""
    try:
        return list(names).index(name)
    except ValueError:
        raise NanonisFileError(path, f"no {what} {name!r}; {what}s are {list(names)}") from None


def mls_segments(header: Mapping[str, str], path: Path) -> list[tuple[float, float, int]]:
    """``(start, end, steps)`` of each segment of an MLS sweep, from the header's segment table.

    The table's key begins ``Segment Start (V), Segment End (V), Settling (s), Integration (s),
    Steps (xn)`` (more fields in newer releases); its value lists segments separated by ``;``,
    fields by ``,``.
    """
    for prefix in MLS_KEYS:
        key = next((k for k in header if k.startswith(prefix)), None)
        if key is None:
            continue
        segments = []
        for text in _split_list(header[key]):
            fields = text.split(",")
            try:
                start, end, steps = float(fields[0]), float(fields[1]), float(fields[4])
            except (IndexError, ValueError):
                what = "is not start,end,settling,integration,steps"
                raise NanonisFileError(path, f"MLS segment {text!r} {what}") from None
            if not (math.isfinite(start) and math.isfinite(end) and steps.is_integer() and 2 <= steps <= 1e6):
                raise NanonisFileError(path, f"MLS segment {text!r}: finite limits and 2 or more steps needed")
            segments.append((start, end, int(steps)))
        if segments:
            return segments
    raise NanonisFileError(path, "Filetype MLS but no segment table ('Segment Start (V), ...') in the header")


def mls_axis(segments: Sequence[tuple[float, float, int]]) -> np.ndarray:
    """The sweep of MLS ``segments``: each segment's ``steps`` points from start to end, the end of
    one segment and the start of the next stored once (the last segment keeps all its points), so
    ``len = sum(steps) - (n_segments - 1)``; the rule of SIDAM's loader, consistent with the
    ``Points`` of the published MLS headers."""
    parts = [np.linspace(a, b, n)[: None if k == len(segments) - 1 else -1] for k, (a, b, n) in enumerate(segments)]
    return np.concatenate(parts)


def parse_header(text: str, path: Path) -> dict[str, str]:
    """``key -> value`` of a .3ds header (quotes around values removed)."""
    header: dict[str, str] = {}
    for line in text.split("\r\n"):
        if "=" in line:
            key, value = line.split("=", 1)
            header[key] = value.strip('"') if value.count('"') == 2 and value.startswith('"') else value
    missing = [k for k in _REQUIRED_KEYS if k not in header]
    if missing:
        raise NanonisFileError(path, f"header lacks {missing}; not a Nanonis grid spectroscopy file")
    return header


@dataclass(frozen=True)
class GridSettings:
    """The header's "Grid settings": centre (m), size (m) and angle (deg)."""

    centre_x_m: float
    centre_y_m: float
    width_m: float
    height_m: float
    angle_deg: float


class NanonisGrid:
    """A ``.3ds`` grid opened for reading; use :func:`open_3ds`.

    Attributes
    ----------
    header : dict
        Every header entry as text.
    nx, ny, n_points : int
    sweep_signal : str
        e.g. ``"Bias (V)"`` or ``"Z (m)"``.
    fixed_parameters, experiment_parameters, channel_names : list of str
    n_records : int
        Complete point records present in the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(min(size, _MAX_HEADER))
        end = head.find(HEADER_END)
        if end < 0:
            raise NanonisFileError(path, "no ':HEADER_END:' line; not a Nanonis .3ds file or truncated header")
        try:
            text = head[:end].decode("latin-1")
        except UnicodeDecodeError as exc:  # latin-1 decodes any byte; kept for clarity of intent
            raise NanonisFileError(path, f"header is not text: {exc}") from exc
        self.header = parse_header(text, path)
        h = self.header
        if h["Filetype"] not in ("Linear", "MLS"):
            raise NanonisFileError(path, f"Filetype {h['Filetype']!r}; the 'Linear' and 'MLS' layouts are supported")
        try:
            nx_s, ny_s = h["Grid dim"].split("x")
            self.nx, self.ny = int(nx_s), int(ny_s)
            values = [float(v) for v in h["Grid settings"].split(";")]
            self.settings = GridSettings(*values[:5])
            self.n_points = int(h["Points"])
            n_params = int(h["# Parameters (4 byte)"])
            experiment_size = int(h["Experiment size (bytes)"]) if "Experiment size (bytes)" in h else None
        except (ValueError, TypeError) as exc:
            raise NanonisFileError(path, f"malformed grid header ({exc})") from exc
        self.sweep_signal = h["Sweep Signal"]
        self.fixed_parameters = _split_list(h["Fixed parameters"])
        self.experiment_parameters = _split_list(h["Experiment parameters"])
        self.channel_names = _split_list(h["Channels"])
        if n_params != len(self.fixed_parameters) + len(self.experiment_parameters):
            raise NanonisFileError(
                path,
                f"'# Parameters (4 byte)'={n_params} but the header names "
                f"{len(self.fixed_parameters) + len(self.experiment_parameters)}",
            )
        if self.nx < 1 or self.ny < 1 or self.n_points < 1 or not self.channel_names:
            raise NanonisFileError(path, "grid dimensions, points and channels must be positive")
        if self.nx * self.ny > _MAX_GRID_POINTS:  # the maps are allocated whole: refuse before trying
            raise NanonisFileError(
                path, f"'Grid dim' {self.nx} x {self.ny} exceeds {_MAX_GRID_POINTS} points; the header is corrupt"
            )
        expected_exp = len(self.channel_names) * self.n_points * 4
        if experiment_size is not None and experiment_size != expected_exp:
            raise NanonisFileError(
                path, f"'Experiment size (bytes)' {experiment_size} != channels x points x 4 = {expected_exp}"
            )
        #: the sweep of an MLS grid (the same at every point), None for a linear one
        self.mls_sweep: np.ndarray | None = None
        if h["Filetype"] == "MLS":
            self.mls_sweep = mls_axis(mls_segments(h, path))
            if self.mls_sweep.size != self.n_points:
                raise NanonisFileError(
                    path, f"MLS segments make {self.mls_sweep.size} points, the header says Points={self.n_points}"
                )
        self.n_params = n_params
        self.record_len = n_params + len(self.channel_names) * self.n_points
        self._offset = end + len(HEADER_END)
        self.n_records = 0
        #: bytes beyond the last complete record (a record cut off by a stop or a crash)
        self.trailing_bytes = 0
        self._data: np.ndarray | None = None
        self.measured = np.zeros((self.ny, self.nx), dtype=bool)
        self._extend(size)

    # structure
    @property
    def parameter_names(self) -> list[str]:
        return self.fixed_parameters + self.experiment_parameters

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def n_missing(self) -> int:
        """Grid points never measured (missing records or empty ones)."""
        return int(self.nx * self.ny - np.count_nonzero(self.measured))

    @property
    def geometry(self) -> GridGeometry:
        s = self.settings
        return GridGeometry(
            centre_x_m=s.centre_x_m,
            centre_y_m=s.centre_y_m,
            width_m=s.width_m,
            height_m=s.height_m,
            nx=self.nx,
            ny=self.ny,
            angle_deg=s.angle_deg,
        )

    @property
    def is_bias_sweep(self) -> bool:
        return self.sweep_signal.startswith("Bias")

    def _extend(self, size: int) -> int:
        """Take in the complete records of a file of ``size`` bytes; returns how many are new."""
        data_bytes = size - self._offset
        n = max(0, min(data_bytes // (4 * self.record_len), self.nx * self.ny))
        if n < self.n_records:
            raise NanonisFileError(self.path, f"the file shrank to {n} records from {self.n_records}; it was replaced")
        old, self.n_records = self.n_records, n
        self.trailing_bytes = max(0, data_bytes - n * 4 * self.record_len)
        if n > old:
            self._data = np.memmap(self.path, dtype=">f4", mode="r", offset=self._offset, shape=(n, self.record_len))
            params = np.asarray(self._data[old:n, : self.n_params], dtype=np.float32)
            self.measured.reshape(-1)[old:n] = ~np.all(np.isnan(params) | (params == 0), axis=1)
        return n - old

    def refresh(self) -> int:
        """Take in the records appended since the last look (a grid the controller is still
        writing: header first, then one record per point); a record not yet complete waits.

        Returns
        -------
        int
            Complete records new since the last call.

        Raises
        ------
        NanonisFileError
            The header moved or the file shrank (it was rewritten): open it again.
        """
        with open(self.path, "rb") as fh:
            fh.seek(self._offset - len(HEADER_END))
            if fh.read(len(HEADER_END)) != HEADER_END:
                raise NanonisFileError(self.path, "the header changed while the grid was read; open it again")
            size = os.fstat(fh.fileno()).st_size
        return self._extend(size)

    # data
    def _records(self, rows: slice) -> tuple[np.ndarray, range]:
        """Records of grid rows ``rows`` as float32 ``(nrows, nx, record_len)``, NaN where unmeasured."""
        r = range(*rows.indices(self.ny))
        if r.step != 1:
            raise NanonisFileError(self.path, "row slices must have step 1")
        out = np.full((len(r), self.nx, self.record_len), np.nan, dtype=np.float32)
        if self._data is not None and len(r):
            first, last = r.start * self.nx, min(r.stop * self.nx, self.n_records)
            if last > first:
                flat = out.reshape(-1, self.record_len)
                flat[: last - first] = self._data[first:last]
        out[~self.measured[r.start : r.stop]] = np.nan
        return out, r

    def channel_index(self, name: str) -> int:
        return name_index(self.channel_names, name, "channel", self.path)

    def read_block(self, rows: slice = slice(None), channels: Sequence[str] | None = None) -> np.ndarray:
        """Spectra ``(rows, nx, channels, n_points)`` float32, NaN where never measured."""
        rec, _ = self._records(rows)
        names = self.channel_names if channels is None else list(channels)
        idx = [self.channel_index(c) for c in names]
        data = rec[:, :, self.n_params :].reshape(rec.shape[0], self.nx, len(self.channel_names), self.n_points)
        return np.ascontiguousarray(data[:, :, idx])

    def channel(self, name: str, rows: slice = slice(None)) -> np.ndarray:
        """One channel ``(rows, nx, n_points)`` float32."""
        return self.read_block(rows, [name])[:, :, 0]

    def parameter(self, name: str) -> np.ndarray:
        """One per-point parameter map ``(ny, nx)`` float32, NaN where never measured."""
        k = name_index(self.parameter_names, name, "parameter", self.path)
        flat = np.full(self.nx * self.ny, np.nan, dtype=np.float32)
        if self._data is not None:
            flat[: self.n_records] = self._data[:, k]
        out = flat.reshape(self.ny, self.nx)
        out[~self.measured] = np.nan
        return out

    def sweep_axis(self, iy: int, ix: int) -> np.ndarray:
        """Sweep values of one point (float64, unit of the sweep signal): the MLS sweep, else
        ``linspace`` of its Sweep Start/End."""
        return self.sweep_axes(slice(iy, iy + 1))[0, ix]

    def sweep_axes(self, rows: slice = slice(None)) -> np.ndarray:
        """Sweep values of the points of grid rows ``rows``, ``(rows, nx, n_points)`` float64 (NaN where unmeasured)."""
        r = range(*rows.indices(self.ny))
        if self.mls_sweep is not None:
            out = np.broadcast_to(self.mls_sweep, (len(r), self.nx, self.n_points)).copy()
            out[~self.measured[rows]] = np.nan
            return out
        start = self.parameter("Sweep Start")[rows].astype(np.float64)
        end = self.parameter("Sweep End")[rows].astype(np.float64)
        # np.linspace per point: bit for bit the axis of a set-point set with these limits
        # (SetpointSet.bias_axis), so a replayed grid and the file analysed offline agree
        return np.linspace(start, end, self.n_points, axis=-1)

    def sweep_varies(self) -> bool:
        """Whether the measured points' sweeps differ: an MLS sweep never does; otherwise their
        Sweep Start/End parameters (not :meth:`sweep_axes`, 1 GB for a 300 x 250 x 1601 grid)."""
        if self.mls_sweep is not None:
            return False
        done = self.measured
        ends = np.stack([self.parameter("Sweep Start")[done], self.parameter("Sweep End")[done]])
        return bool(ends.size) and bool(np.ptp(ends, axis=1).max() > 0)

    def nominal_sweep(self) -> np.ndarray:
        """The sweep axis of the first measured point (NaN-filled when nothing was measured)."""
        done = np.argwhere(self.measured)
        if not done.size:
            return np.full(self.n_points, np.nan)
        return self.sweep_axis(int(done[0, 0]), int(done[0, 1]))

    def conditions(self, *, amplitude_convention: AmplitudeConvention | None = None) -> RecordingConditions:
        """Temperature, modulation and bias wiring from the header and the per-point parameters
        (:func:`~stslive.acquisition.formats.conditions.conditions_from_header`)."""
        params = {n: self.parameter(n) for n in self.parameter_names if "temperature" in n.lower()}
        return conditions_from_header(self.header, parameters=params, amplitude_convention=amplitude_convention)

    def iter_blocks(self, rows: int = 16, channels: Sequence[str] | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(row_slice, block)`` with blocks from :meth:`read_block`."""
        for start in range(0, self.ny, rows):
            sl = slice(start, min(self.ny, start + rows))
            yield sl, self.read_block(sl, channels)

    def close(self) -> None:
        self._data = None

    def __enter__(self) -> NanonisGrid:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_3ds(path: str | os.PathLike[str]) -> NanonisGrid:
    """Open a Nanonis ``.3ds`` grid; NanonisFileError on anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise NanonisFileError(path, "no such file; check the path")
    return NanonisGrid(path)
