"""Writing Nanonis grid spectroscopy files (``.3ds``), and exporting run archives to them.

:func:`write_3ds` writes the layout :mod:`~stslive.acquisition.formats.nanonis3ds` reads
("Linear", or "MLS" with a segment table), so the lab's Nanonis tools open our grids;
:func:`export_archive` turns an stslive run archive into one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.formats.conditions import AMPLITUDE_CONVENTION_KEY
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.drivers.errors import NanonisFileError

HEADER_END = b":HEADER_END:\r\n"
FIXED_PARAMETERS = ["Sweep Start", "Sweep End"]
TIME_FORMAT = "%d.%m.%Y %H:%M:%S"
#: The grid header's key of the MLS segment table (Generic 4 field list).
MLS_SEGMENT_KEY = "Segment Start (V), Segment End (V), Settling (s), Integration (s), Steps (xn)"


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
    mls_segments: Sequence[tuple[float, float, float, float, int]] | None = None,
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
    mls_segments
        ``(start, end, settling_s, integration_s, steps)`` per segment: an "MLS" file whose sweep
        is these segments (their points, ends shared, must total ``n_points``).
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
        "Filetype": "Linear" if mls_segments is None else "MLS",
        "Sweep Signal": f'"{sweep_signal}"',
        "Fixed parameters": quote(FIXED_PARAMETERS),
        "Experiment parameters": quote(list(params)),
        "# Parameters (4 byte)": str(n_params),
        "Experiment size (bytes)": str(len(names) * n_points * 4),
        "Points": str(n_points),
        "Channels": quote(names),
        "Delay before measuring (s)": _fmt(0.0),
        "Experiment": '"Grid Spectroscopy"',
        "Start time": f'"{datetime.fromtimestamp(start_time).strftime(TIME_FORMAT)}"' if start_time else '""',
        "End time": f'"{datetime.fromtimestamp(end_time).strftime(TIME_FORMAT)}"' if end_time else '""',
        "User": "",
        "Comment": comment.replace("\r", " ").replace("\n", " "),
    }
    if mls_segments is not None:
        table = (",".join(_fmt(v) for v in seg[:4]) + f",{int(seg[4])}" for seg in mls_segments)
        lines[MLS_SEGMENT_KEY] = ";".join(table)
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
            "Current>Current (A)": _fmt(first.current_setpoint_A),
            "stslive>Run uid": ar.run_uid,
            "stslive>Software version": ar.software_version,
        }
        amplitude, frequency = first.lockin_amplitude_Vrms, first.lockin_frequency_Hz
        if amplitude is not None:  # the archive's rms value, said to be rms for our own reader
            extra["Bias Spectroscopy>Lock-In run"] = "TRUE" if amplitude > 0 else "FALSE"
            extra["Lock-in>Modulated signal"] = '"Bias (V)"'
            extra["Lock-in>Amplitude"] = _fmt(amplitude)
            extra[AMPLITUDE_CONVENTION_KEY] = "rms"
        if frequency is not None:
            extra["Lock-in>Frequency (Hz)"] = _fmt(frequency)
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
