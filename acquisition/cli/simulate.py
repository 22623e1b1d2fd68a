"""``stslive simulate``: write a run archive of a simulated NbN film scan, ground truth inside.

The film (:mod:`stslive.mocks.film`) is generated in bounded row blocks and each block goes to
the archive with :meth:`ArchiveWriter.write_block`, so memory stays at a few blocks whatever the
grid. Channels are those of a Nanonis grid with the internal lock-in: ``"Bias (V)"``,
``"Current (A)"``, ``"LI Demod 1 X (A)"``. The ground truth (model maps, the definition truth
that the analysis is judged against, the sheet-resistance map) and the topography are stored in
the same file (``entry/sample``).

This composes a mock (the film) with a format (the archive), so it lives in ``acquisition``, the
composing layer: mocks never import acquisition (ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.runmodel import GridGeometry, SetpointSet
from stslive.drivers.errors import ConfigError
from stslive.mocks.film import Film, FilmParams, make_film

#: Channel names of the simulated archive, in stored order.
CHANNELS: tuple[str, str, str] = ("Bias (V)", "Current (A)", "LI Demod 1 X (A)")


def parse_grid(text: str) -> tuple[int, int]:
    """``"NXxNY"`` (columns x rows, as a scan is described: 300x250) -> (ny, nx)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise ConfigError(f"--grid {text!r}: give columns x rows, e.g. 300x250")
    return int(match[2]), int(match[1])


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> dict; a malformed item is refused with an example."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: give KEY=VALUE, e.g. --set sigma_rho_ohm=900")
        out[key.strip()] = value.strip()
    return out


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
    """
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
    unset = [
        "lockin_frequency_Hz",
        "lockin_time_constant_s",
        "lockin_sensitivity_V",
        "lockin_status",
        "lockin_overload",
    ]
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
        overwrite=overwrite,
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", default="300x250", help="columns x rows (default: 300x250, the paper's map)")
    parser.add_argument("--out", required=True, type=Path, help="archive file to write (HDF5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random stream (default: 0)")
    parser.add_argument("--points", type=int, default=1601, help="points per sweep, -40..+40 mV (default: 1601)")
    parser.add_argument("--noise-pA", type=float, default=0.5, help="rms current noise, pA (default: 0.5)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any other FilmParams field, SI units (e.g. sigma_rho_ohm=900); repeatable",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    ny, nx = parse_grid(args.grid)
    film = make_film(
        film_params(
            ny, nx, seed=args.seed, points=args.points, noise_pA=args.noise_pA, extra=parse_assignments(args.set)
        )
    )
    stats = write_film_archive(film, args.out, overwrite=args.overwrite)
    print(
        f"wrote {args.out}: {nx} x {ny} pixels x {args.points} points in {stats['elapsed_s']:.1f} s "
        f"(channels {', '.join(CHANNELS)}; ground truth in entry/sample/ground_truth)"
    )
    return 0
