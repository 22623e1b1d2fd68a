"""Nanonis grid spectroscopy files (``.3ds``, binary "Linear" layout): read and write.

Format (checked against the reference files and the public readers nanonispy and SpmGrids.jl):
an ASCII header of ``key=value`` lines (CRLF) ending with ``:HEADER_END:`` + CRLF, then one
record per grid point, row after row (x fastest), each record big-endian float32: the
parameters (fixed first: "Sweep Start", "Sweep End"; then the experiment parameters), then
every channel's ``Points`` values in header order. "Grid dim" is ``"nx x ny"``; "Grid settings"
is ``centre x; centre y; width; height; angle`` in m and degrees. A grid stopped early simply
ends; points never reached (missing records, or records of NaN or zeros) read as NaN.

The data region is memory-mapped, so blocks of rows are converted on demand and a file larger
than memory can be analysed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

import numpy as np

from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.drivers.errors import NanonisFileError

HEADER_END = b":HEADER_END:\r\n"
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
_FIXED = ["Sweep Start", "Sweep End"]
_TIME_FORMAT = "%d.%m.%Y %H:%M:%S"


def _split_list(value: str) -> list[str]:
    return [item for item in value.strip('"').split(";") if item]


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
        if h["Filetype"] != "Linear":
            raise NanonisFileError(path, f"Filetype {h['Filetype']!r}; only the binary 'Linear' layout is supported")
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
        self.n_params = n_params
        self.record_len = n_params + len(self.channel_names) * self.n_points
        offset = end + len(HEADER_END)
        data_bytes = size - offset
        self.n_records = min(data_bytes // (4 * self.record_len), self.nx * self.ny)
        #: bytes beyond the last complete record (a record cut off by a stop or a crash)
        self.trailing_bytes = data_bytes - self.n_records * 4 * self.record_len
        self._data: np.ndarray | None = (
            np.memmap(path, dtype=">f4", mode="r", offset=offset, shape=(self.n_records, self.record_len))
            if self.n_records
            else None
        )
        self.measured = self._measured_mask()

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

    def _measured_mask(self) -> np.ndarray:
        mask = np.zeros(self.nx * self.ny, dtype=bool)
        if self._data is not None:
            params = np.asarray(self._data[:, : self.n_params], dtype=np.float32)
            empty = np.all(np.isnan(params) | (params == 0), axis=1)
            mask[: self.n_records] = ~empty
        return mask.reshape(self.ny, self.nx)

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
        try:
            return self.channel_names.index(name)
        except ValueError:
            raise NanonisFileError(self.path, f"no channel {name!r}; channels are {self.channel_names}") from None

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
        try:
            k = self.parameter_names.index(name)
        except ValueError:
            raise NanonisFileError(self.path, f"no parameter {name!r}; parameters are {self.parameter_names}") from None
        flat = np.full(self.nx * self.ny, np.nan, dtype=np.float32)
        if self._data is not None:
            flat[: self.n_records] = self._data[:, k]
        out = flat.reshape(self.ny, self.nx)
        out[~self.measured] = np.nan
        return out

    def sweep_axis(self, iy: int, ix: int) -> np.ndarray:
        """Sweep values of one point from its Sweep Start/End (float64, unit of the sweep signal)."""
        start, end = self.parameter("Sweep Start")[iy, ix], self.parameter("Sweep End")[iy, ix]
        return np.linspace(float(start), float(end), self.n_points)

    def nominal_sweep(self) -> np.ndarray:
        """The sweep axis of the first measured point (NaN-filled when nothing was measured)."""
        done = np.argwhere(self.measured)
        if not done.size:
            return np.full(self.n_points, np.nan)
        return self.sweep_axis(int(done[0, 0]), int(done[0, 1]))

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


# -- writer ------------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return f"{value:.6E}"


def write_3ds(
    path: str | os.PathLike[str],
    *,
    spectra: np.ndarray | Iterator[np.ndarray],
    channel_names: Sequence[str],
    geometry: GridGeometry,
    sweep_start: np.ndarray | float,
    sweep_end: np.ndarray | float,
    n_points: int,
    sweep_signal: str = "Bias (V)",
    parameters: Mapping[str, np.ndarray] | None = None,
    measured: np.ndarray | None = None,
    header: Mapping[str, str] | None = None,
    start_time: float | None = None,
    end_time: float | None = None,
    comment: str = "",
) -> None:
    """Write a grid as a Nanonis ``.3ds`` (Linear layout) that Nanonis-reading tools open.

    Parameters
    ----------
    spectra
        ``(ny, nx, n_channels, n_points)``, or an iterator of row blocks of that layout (memory
        bounded export); converted to big-endian float32.
    sweep_start, sweep_end
        Per point ``(ny, nx)`` or scalars, in the sweep signal's unit.
    parameters
        Experiment parameters ``"Name (unit)" -> (ny, nx)``, written after the fixed ones.
    measured
        ``(ny, nx)`` bool; points not measured are written as NaN records (parameters included),
        which our reader and SpmGrids.jl read back as missing.
    header
        Extra header entries (e.g. ``"Bias Spectroscopy>Sweep Start (V)"``), written as given.
    """
    path = Path(path)
    ny, nx = geometry.shape
    names = list(channel_names)
    params = dict(parameters or {})
    for key, value in params.items():
        if np.shape(value) != (ny, nx):
            raise NanonisFileError(path, f"parameter {key!r} has shape {np.shape(value)}, expected {(ny, nx)}")
    done = np.ones((ny, nx), dtype=bool) if measured is None else np.asarray(measured, dtype=bool)
    fixed = [np.broadcast_to(np.asarray(v, dtype=np.float32), (ny, nx)) for v in (sweep_start, sweep_end)]
    ordered = fixed + [np.asarray(v, dtype=np.float32) for v in params.values()]
    n_params = len(ordered)
    quote = lambda items: '"' + ";".join(items) + '"'
    lines = {
        "Grid dim": f'"{nx} x {ny}"',
        "Grid settings": ";".join(
            _fmt(v)
            for v in (geometry.centre_x_m, geometry.centre_y_m, geometry.width_m, geometry.height_m, geometry.angle_deg)
        ),
        "Filetype": "Linear",
        "Sweep Signal": f'"{sweep_signal}"',
        "Fixed parameters": quote(_FIXED),
        "Experiment parameters": quote(list(params)),
        "# Parameters (4 byte)": str(n_params),
        "Experiment size (bytes)": str(len(names) * n_points * 4),
        "Points": str(n_points),
        "Channels": quote(names),
        "Delay before measuring (s)": _fmt(0.0),
        "Experiment": '"Grid Spectroscopy"',
        "Start time": f'"{datetime.fromtimestamp(start_time).strftime(_TIME_FORMAT)}"' if start_time else '""',
        "End time": f'"{datetime.fromtimestamp(end_time).strftime(_TIME_FORMAT)}"' if end_time else '""',
        "User": "",
        "Comment": comment.replace("\r", " ").replace("\n", " "),
    }
    lines.update(header or {})
    text = "".join(f"{k}={v}\r\n" for k, v in lines.items()).encode("latin-1", errors="replace")
    blocks = iter([spectra]) if isinstance(spectra, np.ndarray) else spectra
    row = 0
    with open(path, "wb") as fh:
        fh.write(text + HEADER_END)
        for block in blocks:
            block = np.asarray(block)
            if block.ndim != 4 or block.shape[1:] != (nx, len(names), n_points):
                raise NanonisFileError(
                    path, f"spectra block shape {block.shape}, expected (rows, {nx}, {len(names)}, {n_points})"
                )
            rows = slice(row, row + block.shape[0])
            rec = np.empty((block.shape[0], nx, n_params + len(names) * n_points), dtype=">f4")
            for k, p in enumerate(ordered):
                rec[:, :, k] = p[rows]
            rec[:, :, n_params:] = block.reshape(block.shape[0], nx, -1)
            rec[~done[rows]] = np.nan
            fh.write(rec.tobytes())
            row += block.shape[0]
    if row != ny:
        raise NanonisFileError(path, f"spectra covered {row} rows, the grid has {ny}; the file is incomplete")


def export_archive(
    archive_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, rows_per_block: int = 8
) -> None:
    """Export an stslive run archive to ``.3ds`` so the lab's Nanonis tools open it.

    Each point gets its own set-point set's sweep limits as Sweep Start/End; the per-pixel
    metadata become experiment parameters (X, Y, Z, temperatures, set id, lock-in status,
    settling/integration times of its set).
    """
    from stslive.acquisition.formats.archive import open_archive  # format module beside this one

    with open_archive(archive_path) as ar:
        meta = ar.pixel_meta
        sets = ar.setpoint_sets
        ids = meta["setpoint_set_id"]
        table = {
            key: np.full(ids.shape, np.nan, dtype=np.float32)
            for key in ("sweep_start_V", "sweep_end_V", "settle_s", "integration_s", "current_setpoint_A")
        }
        for sid, s in sets.items():
            for key, arr in table.items():
                arr[ids == sid] = getattr(s, key)
        params = {
            "X (m)": meta["x_m"],
            "Y (m)": meta["y_m"],
            "Z (m)": meta["z_m"],
            "Settling time (s)": table["settle_s"],
            "Integration time (s)": table["integration_s"],
            "Scan:Current (A)": table["current_setpoint_A"],
            "Temperature before (K)": meta["temperature_before_K"],
            "Temperature after (K)": meta["temperature_after_K"],
            "Setpoint set": ids.astype(np.float32),
            "Lock-in status": meta["lockin_status"].astype(np.float32),
        }
        first = sets[min(sets)]
        extra = {
            "Bias>Bias (V)": _fmt(first.bias_setpoint_V),
            "Bias Spectroscopy>Sweep Start (V)": _fmt(first.sweep_start_V),
            "Bias Spectroscopy>Sweep End (V)": _fmt(first.sweep_end_V),
            "Bias Spectroscopy>Num Pixel": str(ar.n_points),
            "Bias Spectroscopy>Z-controller hold": "TRUE" if first.feedback_hold else "FALSE",
            "Lock-in>Frequency (Hz)": _fmt(first.lockin_frequency_Hz),
            "Lock-in>Amplitude": _fmt(first.lockin_amplitude_Vrms),
            "Current>Current (A)": _fmt(first.current_setpoint_A),
            "stslive>Run uid": ar.run_uid,
            "stslive>Software version": ar.software_version,
        }
        start = ar.documents.get("start", {})
        stop = ar.documents.get("stop", {})
        write_3ds(
            out_path,
            spectra=(blk for _, blk in ar.iter_blocks(rows=rows_per_block)),
            channel_names=ar.channel_names,
            geometry=ar.geometry,
            sweep_start=table["sweep_start_V"],
            sweep_end=table["sweep_end_V"],
            n_points=ar.n_points,
            parameters=params,
            measured=ar.measured,
            header=extra,
            start_time=start.get("time"),
            end_time=stop.get("time"),
            comment=f"stslive run {ar.run_uid}",
        )
