"""A simulated NbN film scan written as a run archive, ground truth inside (``stslive simulate``).

The film (:mod:`stslive.mocks.film`) is generated in bounded row blocks and each block goes to
the archive with :meth:`ArchiveWriter.write_block`, so memory stays at a few blocks whatever the
grid. Channels are those of a Nanonis grid with the internal lock-in (:data:`CHANNELS`). The
ground truth (model maps, the definition truth the analysis is judged against, the
sheet-resistance map) and the topography are stored in the same file (``entry/sample``). The
archive is written under a temporary name and renamed when complete, so ``--out`` is either the
whole film or untouched (an earlier file there stays until the new one replaces it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.runmodel import GridGeometry, SetpointSet
from stslive.drivers.errors import ArchiveError, ConfigError
from stslive.mocks.film import Film, FilmParams

#: Channel names of the simulated archive, in stored order.
CHANNELS: tuple[str, str, str] = ("Bias (V)", "Current (A)", "LI Demod 1 X (A)")


def film_params(ny: int, nx: int, *, seed: int, points: int, noise_pA: float, extra: dict[str, str]) -> FilmParams:
    """FilmParams from the command line; ``extra`` (``--set``) values are parsed per field type."""
    values: dict[str, Any] = {"ny": ny, "nx": nx, "seed": seed, "n_points": points, "current_noise_A": noise_pA * 1e-12}
    for key, raw in extra.items():
        if key in values:
            raise ConfigError(f"--set {key}: use the dedicated option instead")
        try:
            values[key] = [float(v) for v in raw.split(",")] if "," in raw else float(raw)
        except ValueError:
            raise ConfigError(f"--set {key}={raw!r}: not a number (pairs as low,high)") from None
    return FilmParams.from_dict(values)


def write_film_archive(
    film: Film, path: Path, *, overwrite: bool = False, rows_per_block: int | None = None
) -> dict[str, float]:
    """Write ``film``'s whole scan to an archive at ``path`` with its ground truth.

    Returns
    -------
    dict
        ``pixels``, ``elapsed_s`` (wall time of generation + writing).

    Raises
    ------
    ArchiveError
        ``path`` exists and ``overwrite`` is false (checked before anything is written).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArchiveError(path, "file exists; choose another --out, or pass --overwrite to replace it")
    partial = path.with_name(path.name + ".partial")
    try:
        stats = _write(film, partial, rows_per_block)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # an interrupted or failed write leaves nothing behind
    return stats


def _write(film: Film, path: Path, rows_per_block: int | None = None) -> dict[str, float]:
    p = film.params
    t0 = time.time()
    geometry = GridGeometry(
        centre_x_m=0.0, centre_y_m=0.0, width_m=p.nx * p.pixel_m, height_m=p.ny * p.pixel_m, nx=p.nx, ny=p.ny
    )
    # the film's current has the sign of the bias, so the set-point current has that of v_set
    setpoint = SetpointSet(
        id=0,
        name="simulated spectroscopy",
        bias_setpoint_V=p.v_set_V,
        current_setpoint_A=float(np.sign(p.v_set_V)) * p.i_set_A,
        sweep_start_V=p.bias_start_V,
        sweep_end_V=p.bias_end_V,
        n_points=p.n_points,
        lockin_amplitude_Vrms=p.modulation_Vrms,
    )
    # no instrument set or read these: the flag rules that need them are not judged
    unset = ["lockin_frequency_Hz", "lockin_time_constant_s", "lockin_sensitivity_V"]
    unset += ["lockin_status", "lockin_overload"]
    start_doc = {"time": t0, "plan": "simulate", "film_params": _json_params(p), "metadata": {"not_recorded": unset}}
    with ArchiveWriter.create(
        path,
        geometry=geometry,
        channel_names=list(CHANNELS),
        n_points=p.n_points,
        setpoint_sets=[setpoint],
        start_doc=start_doc,
        swmr=False,
        topography=film.topography_m,
        bias=film.bias_V,
        overwrite=True,  # the temporary name: a stale one of a killed earlier run is replaced
    ) as writer:
        for rows, block in film.iter_blocks(rows_per_block=rows_per_block):
            shape = block.current_A.shape
            spectra = np.empty((shape[0], shape[1], len(CHANNELS), shape[2]), dtype=np.float32)
            spectra[:, :, 0] = block.bias_V.astype(np.float32)
            spectra[:, :, 1] = block.current_A
            spectra[:, :, 2] = block.lockin_x_A
            now = time.time()
            writer.write_block(
                rows,
                slice(None),
                spectra,
                {
                    "setpoint_set_id": 0,
                    "t_start": now,
                    "t_sweep_start": now,
                    "t_sweep_end": now,
                    "t_end": now,
                    "temperature_before_K": p.temperature_K,
                    "temperature_after_K": p.temperature_K,
                },
            )
        truth = film.definition_truth()  # filled by the complete pass above, no recomputation
        writer.write_ground_truth(
            {
                "delta_model": (film.delta_eV, "eV"),
                "alpha_model": (film.alpha, ""),
                "delta_rho": (film.delta_rho_ohm, "ohm"),
                "delta_def": (truth.delta_pp_eV, "eV"),
                "alpha_def": (truth.alpha_def, ""),
                "topography": (film.topography_m, "m"),
            }
        )
        writer.write_document("stop", {"time": time.time(), "exit_status": "success", "pixels": p.ny * p.nx})
    return {"pixels": float(p.ny * p.nx), "elapsed_s": time.time() - t0}


def _json_params(p: FilmParams) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(p).items()}
