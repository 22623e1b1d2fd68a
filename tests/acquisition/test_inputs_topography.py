"""The topography rule of SpectraSource: stored map first, else the measured tip heights minus a plane."""

from __future__ import annotations

import numpy as np
import pytest

from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.recording import TOPO_FROM_FILE, TOPO_FROM_Z, open_spectra, topography_from_z
from stslive.acquisition.formats.runmodel import GridGeometry, SetpointSet
from stslive.drivers.errors import AnalysisError

NY, NX, NPTS = 12, 16, 64
IY, IX = np.mgrid[0:NY, 0:NX]
RELIEF = 1.5e-10 * np.sin(IX / 1.7) * np.cos(IY / 2.3)


def test_plane_and_per_set_offsets_removed():
    sets = (IX + IY) % 2  # two interleaved set-point sets, z offset differs by their I_set
    z = 4e-9 + 5e-11 * IX - 3e-11 * IY + 2e-10 * sets + RELIEF
    z[3, 4] = np.nan
    topo = topography_from_z(z, set_ids=sets)
    assert topo.dtype == np.float32 and np.isnan(topo[3, 4])
    ok = np.isfinite(topo)
    a = np.column_stack([IX[ok], IY[ok], np.ones(ok.sum())])  # the relief has a small plane of its own
    expect = RELIEF[ok] - a @ np.linalg.lstsq(a, RELIEF[ok], rcond=None)[0]
    assert np.abs(topo[ok] - expect).max() < 1e-3 * np.abs(RELIEF).max()
    # one set only: the set offset would remain as a step, so the offsets must be per set
    assert np.ptp(topography_from_z(z, set_ids=None)[ok]) > 1.5 * np.ptp(topo[ok])


def test_held_or_missing_z_is_no_topography():
    assert topography_from_z(np.full((NY, NX), 1.1e-8)) is None  # constant-height grid: Z held
    assert topography_from_z(1e-9 * IX + 2e-9 * IY) is None  # a pure plane has no relief either
    assert topography_from_z(np.full((NY, NX), np.nan)) is None
    with pytest.raises(AnalysisError, match="2D"):
        topography_from_z(np.zeros(5))


def _archive(path, *, z_m=None, stored=None):
    geo = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=NX * 1e-9, height_m=NY * 1e-9, nx=NX, ny=NY)
    sp = SetpointSet(
        id=0,
        name="spec",
        bias_setpoint_V=-0.01,
        current_setpoint_A=1e-10,
        sweep_start_V=-0.04,
        sweep_end_V=0.04,
        n_points=NPTS,
    )
    bias = np.linspace(-0.04, 0.04, NPTS)
    spectra = np.empty((NY, NX, 2, NPTS), np.float32)
    spectra[..., 0, :], spectra[..., 1, :] = bias, bias * 1e-8
    with ArchiveWriter.create(
        path,
        geometry=geo,
        channel_names=["Bias (V)", "Current (A)"],
        n_points=NPTS,
        setpoint_sets=[sp],
        start_doc={},
        bias=bias,
        topography=stored,
        swmr=False,
    ) as w:
        w.write_block(
            slice(0, NY // 2),
            slice(0, NX),
            spectra[: NY // 2],  # half measured: a running scan
            {
                "setpoint_set_id": 0,
                "t_start": 1.0,
                "t_sweep_start": 1.0,
                "t_sweep_end": 2.0,
                "t_end": 2.0,
                **({} if z_m is None else {"z_m": z_m[: NY // 2]}),
            },
        )


def test_archive_without_stored_map_uses_measured_z(tmp_path):
    path = tmp_path / "run.h5"
    _archive(path, z_m=7e-9 + 4e-11 * IX + RELIEF)
    with open_spectra(path) as src:
        topo, origin = src.topography, src.topography_origin
    assert origin == TOPO_FROM_Z
    assert np.isfinite(topo[: NY // 2]).all() and np.isnan(topo[NY // 2 :]).all()
    half = np.s_[: NY // 2]
    a = np.column_stack([IX[half].ravel(), IY[half].ravel(), np.ones(IX[half].size)])
    expect = RELIEF[half].ravel() - a @ np.linalg.lstsq(a, RELIEF[half].ravel(), rcond=None)[0]
    np.testing.assert_allclose(topo[half].ravel(), expect, atol=1e-3 * np.abs(RELIEF).max())


def test_stored_map_wins_and_no_z_gives_none(tmp_path):
    stored = (RELIEF * 2).astype(np.float32)
    _archive(tmp_path / "a.h5", z_m=7e-9 + RELIEF, stored=stored)
    with open_spectra(tmp_path / "a.h5") as src:
        assert src.topography_origin == TOPO_FROM_FILE and np.array_equal(src.topography, stored)
    _archive(tmp_path / "b.h5")
    with open_spectra(tmp_path / "b.h5") as src:
        assert src.topography is None and src.topography_origin == ""
