"""Small Nanonis files for tests, written from the documented formats (docs/formats.md), not copied.

``write_dat`` writes a point spectrum (``.dat``) as the controller does; ``film_line_dats`` a line
of them holding a simulated film's spectra; ``film_grid`` a ``.3ds`` of a simulated film
(linear, or resampled on an MLS sweep).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from stslive.acquisition.formats.nanonis3ds import mls_axis, write_3ds
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.mocks.film import FilmParams, make_film

#: Header of a recent Nanonis point spectrum, as the controller writes the module blocks.
DAT_HEADER = {
    "Experiment": "bias spectroscopy",
    "Date": "04.08.2015 08:49:41",
    "User": "",
    "Z (m)": "-13.4867E-9",
    "Z offset (m)": "0E+0",
    "Settling time (s)": "200E-6",
    "Integration time (s)": "200E-6",
    "Z-Ctrl hold": "TRUE",
    "Final Z (m)": "N/A",
    "Filter type": "None",
    "Bias>Bias (V)": "10E-3",
    "Bias>Calibration (V/V)": "1E+0",
    "Current>Current (A)": "150E-12",
    "Lock-in>Lock-in status": "OFF",
    "Lock-in>Modulated signal": "Bias (V)",
    "Lock-in>Frequency (Hz)": "973E+0",
    "Lock-in>Amplitude": "100E-6",
    "Bias Spectroscopy>Lock-In run": "TRUE",
    "Temperature 1>Temperature 1 (K)": "1.2E+0",
}


def write_dat(
    path: Path,
    *,
    header: Mapping[str, str],
    columns: Sequence[str],
    data: np.ndarray,
    newline: str = "\r\n",
) -> Path:
    """A ``.dat``: ``key<TAB>value<TAB>`` lines, an empty line, ``[DATA]``, column names, rows."""
    lines = [f"{k}\t{v}\t" for k, v in header.items()]
    lines += ["", "[DATA]", "\t".join(columns)]
    lines += ["\t".join("NaN" if not np.isfinite(v) else f"{v:.6E}" for v in row) for row in np.asarray(data)]
    path.write_bytes((newline.join(lines) + newline).encode("latin-1"))
    return path


def film(nx: int, ny: int = 1, *, seed: int = 3, **params: object) -> object:
    return make_film(FilmParams(ny=ny, nx=nx, seed=seed, **params))  # type: ignore[arg-type]


def film_line_dats(
    folder: Path,
    n: int,
    *,
    start_m: tuple[float, float] = (10e-9, -5e-9),
    step_m: tuple[float, float] = (1.5e-9, 0.5e-9),
    jitter_m: float = 0.0,
    header: Mapping[str, str] | None = None,
    seed: int = 3,
) -> tuple[list[Path], object]:
    """``n`` files ``Bias-Spectroscopy00k.dat`` along a line (plus ``jitter_m`` random offsets)."""
    folder.mkdir(parents=True, exist_ok=True)
    f = film(n, seed=seed)
    (_, block), *_ = list(f.iter_blocks(rows_per_block=1))  # type: ignore[attr-defined]
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        x = start_m[0] + k * step_m[0] + jitter_m * rng.normal()
        y = start_m[1] + k * step_m[1] + jitter_m * rng.normal()
        columns = ["Bias calc (V)", "Current (A)", "LI Demod 1 X (A)", "Current [bwd] (A)"]
        data = np.stack([block.bias_V, block.current_A[0, k], block.lockin_x_A[0, k], block.current_A[0, k]], axis=1)
        # the header states the temperature the film was simulated at (a header that contradicts
        # the spectra, 1.2 K over 0.3 K peaks, makes the analysis refuse them)
        temperature = {"Temperature 1>Temperature 1 (K)": f"{f.params.temperature_K:.6E}"}  # type: ignore[attr-defined]
        head = {**DAT_HEADER, "X (m)": f"{x:.6E}", "Y (m)": f"{y:.6E}", **temperature, **(header or {})}
        paths.append(write_dat(folder / f"Bias-Spectroscopy{k + 1:03d}.dat", header=head, columns=columns, data=data))
    return paths, f


def film_grid(
    path: Path,
    *,
    nx: int = 6,
    ny: int = 4,
    header: Mapping[str, str] | None = None,
    mls: Sequence[tuple[float, float, float, float, int]] | None = None,
    channels: Sequence[str] = ("Current (A)", "LI Demod 1 X (A)"),
    seed: int = 5,
) -> tuple[Path, object]:
    """A ``.3ds`` of a simulated film (sweep +40 -> -40 mV); with ``mls`` resampled on those segments."""
    f = film(nx, ny, seed=seed, bias_start_V=0.04, bias_end_V=-0.04, n_points=801)
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=nx * 1e-9, height_m=ny * 1e-9, nx=nx, ny=ny)
    axis = f.bias_V  # type: ignore[attr-defined]
    target = axis if mls is None else mls_axis([(a, b, n) for a, b, _, _, n in mls])

    def resample(values: np.ndarray) -> np.ndarray:
        order = np.argsort(axis)
        return np.apply_along_axis(lambda v: np.interp(target, axis[order], v[order]), -1, values)

    blocks = []
    for _, b in f.iter_blocks(rows_per_block=ny):  # type: ignore[attr-defined]
        parts = {"Current (A)": b.current_A, "LI Demod 1 X (A)": b.lockin_x_A, "Input 3 (A)": b.current_A}
        parts["Current [bwd] (A)"] = b.current_A
        blocks.append(np.stack([resample(parts[c]) for c in channels], axis=2).astype(np.float32))
    write_3ds(
        path,
        spectra=np.concatenate(blocks),
        channel_names=list(channels),
        geometry=geometry,
        sweep_start=float(target[0]),
        sweep_end=float(target[-1]),
        n_points=int(target.size),
        parameters={"X (m)": geometry.pixel_xy(*np.indices((ny, nx)))[0], "Z (m)": np.full((ny, nx), 1e-9)},
        header={"Bias>Bias (V)": "40E-3", "Current>Current (A)": "150E-12", **(header or {})},
        mls_segments=mls,
    )
    return path, f
