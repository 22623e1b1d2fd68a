"""Run archives for the screen tests: a grid of ``Bias (V)`` and ``Current (A)`` spectra, one set-point set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.runmodel import GridGeometry, SetpointSet


def create_archive(
    path: Path, *, ny: int, nx: int, bias: np.ndarray, centre_nm: tuple[float, float] = (0.0, 0.0), swmr: bool = False
) -> ArchiveWriter:
    """A new archive of a 1 nm-pixel grid centred on ``centre_nm``, sweeping ``bias`` (V)."""
    geo = GridGeometry(
        centre_x_m=centre_nm[0] * 1e-9,
        centre_y_m=centre_nm[1] * 1e-9,
        width_m=nx * 1e-9,
        height_m=ny * 1e-9,
        nx=nx,
        ny=ny,
    )
    sp = SetpointSet(
        id=0,
        name="spec",
        bias_setpoint_V=-0.01,
        current_setpoint_A=150e-12,
        sweep_start_V=float(bias[0]),
        sweep_end_V=float(bias[-1]),
        n_points=bias.size,
    )
    return ArchiveWriter.create(
        path,
        geometry=geo,
        channel_names=["Bias (V)", "Current (A)"],
        n_points=bias.size,
        setpoint_sets=[sp],
        start_doc={},
        bias=bias,
        swmr=swmr,
    )
